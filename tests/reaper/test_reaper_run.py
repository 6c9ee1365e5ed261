"""``ctr run`` through containerd-shim-runc-v2: output, exit code, stdin, every byte at exit.

Each test runs with the host's runc (the reference: it proves the harness and the expectation)
and with kata-runtime (``--runc-binary``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.containerd import SIZES, expected, new_id, run_with_stdin, write_size


def test_output_and_exit_code(ctr, image, runtime):
    """``ctr run --rm`` prints the output and returns the exit code; nothing is left after it."""
    cids = [new_id("out"), new_id("rc")]
    res = ctr.run(image, cids[0], ["echo", "hi"], **runtime.run_kwargs())
    assert (res.returncode, res.stdout) == (0, b"hi\n"), res.stderr

    res = ctr.run(image, cids[1], ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
                  **runtime.run_kwargs())
    assert (res.returncode, res.stdout, res.stderr) == (3, b"to-out\n", b"to-err\n")
    assert ctr.wait_clean(cids) == {}


def test_stdin_relayed(ctr, image, runtime):
    """Piped stdin reaches the container, and its end (EOF) too: sha256sum returns."""
    data = os.urandom(300_000) + b"\nlast line without newline"
    rc, out, err = run_with_stdin(ctr, image, new_id("in"), ["sh", "-c", "sha256sum; exit 4"], data,
                                  **runtime.run_kwargs())
    assert rc == 4, err
    assert out == f"{hashlib.sha256(data).hexdigest()}  -\n".encode()


def _run_size(ctr, image, runtime, size: int, stream: str) -> tuple[int, int, bytes, bytes, bytes]:
    cmd = ["sh", "-c", write_size(size, stream)]
    res, out, err = ctr.run_logged(image, new_id(f"sz{size}"), cmd, timeout=180, **runtime.run_kwargs())
    return size, res.returncode, out, err, res.stderr


@pytest.mark.parametrize("stream", ["out", "err"])
def test_exact_output_sizes_at_exit(ctr, image, runtime, stream):
    """Sizes around powers of two up to 16 MiB, written just before the container exits: every
    byte reaches containerd-shim, none extra (the class of bug where the last buffer at exit is
    lost). They are read by a --log-uri logging binary: ``ctr run``'s own stdout loses tails by
    itself in ctr 1.6.20 (see Containerd.run_logged)."""
    sizes = SIZES if stream == "out" else SIZES[:10]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: _run_size(ctr, image, runtime, s, stream), sizes))
    for size, rc, out, err, ctr_err in results:
        got, other = (out, err) if stream == "out" else (err, out)
        assert rc == 0, (size, ctr_err[-500:])
        assert other == b"", size
        assert len(got) == size, f"{size}: got {len(got)} bytes"
        assert got == expected(size), f"{size}: content differs"
