"""glibc heap tuning for bulk transfers (process-wide, once, opt-out).

Moving data through yamux allocates and frees many buffers of 64-256 KiB
(received chunks, joined reads).  With glibc's defaults the top of the heap is
trimmed and regrown over and over, and every regrowth costs page faults: on
the project machine 40 000-600 000 minor faults per GiB echoed, doubling the
CPU time of a bulk transfer.  Raising the mmap threshold above those sizes and
keeping a few MiB of padding at the heap top removes almost all of them
(~5 000 faults) without changing the resident size measurably.

The threshold is 4 MiB, not 1 MiB: 1 MiB payloads are the common bulk size
(kata-shim reads and the agent's stdout replies are 1 MiB, and a 1 MiB bytes
object is 1 MiB plus its header), and with a 1 MiB threshold every one of them
was a fresh mmap: ~500 000 minor faults and ~1.2 ms of CPU per MiB for a loop
keeping four 1 MiB blocks alive, against ~1 500 faults and ~0.06 ms with 4 MiB
(trim threshold 8 MiB, so freeing a few such blocks does not shrink the heap
each time).

Set ``YAMUX_MALLOC_TUNING=0`` in the environment to leave malloc alone.
"""

from __future__ import annotations

import os
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TOP_PAD = 2 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024

_done = False


def tune_malloc() -> bool:
    """Apply the settings once per process.  Returns True if they were applied."""
    global _done
    if _done:
        return False
    _done = True
    if os.environ.get("YAMUX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # glibc only (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    del gnu
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= mallopt(_M_TOP_PAD, TOP_PAD)
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(ok)
