"""glibc heap tuning for bulk transfers (process-wide, once, opt-out).

Moving data through yamux allocates and frees many buffers of 64 KiB to
1 MiB (received chunks, joined reads, 1 MiB payloads of kata-shim and the
agent).  With glibc's defaults the top of the heap is trimmed and regrown
over and over, and blocks above the mmap threshold (a 1 MiB payload is 1 MiB
plus a header) are mapped and unmapped each time: every regrowth and mapping
costs page faults.  A 4 MiB mmap threshold, 2 MiB
of padding kept at the heap top and an 8 MiB trim threshold remove almost
all of them without changing the resident size measurably (the figures, and
why 4 MiB rather than 1 MiB: bench/RESULTS.md, "glibc malloc tuning" in the
yamux section).

A library does not change its process's allocator by itself: the programs
call :func:`tune_malloc` at their entry points (kata-proxy, kata-agent, the
yamux bench).

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
