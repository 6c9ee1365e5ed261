"""The shim's exit path against both agents: every byte arrives, then the right status.

``peer`` is our kata-agent (process sandbox + kata-proxy) or tests/peers/kata1x_agent.py,
which keeps the Kata 1.x agent's rule that WaitProcess closes the process's pipes and forgets
it: a shim that waits while it still reads loses the tail of the output there (issue 11,
research/kata1x.md "Order at exit").  Only the faults that need a peer's misbehaviour (a read
that fails with something other than EOF; the peer killed) run against the peer alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import struct
import subprocess
import termios
import time

import pytest

from kata_grpc import h2
from kata_shim import exits
from kata_grpc.h2 import RpcError
from kata_shim.shim import is_eof

MiB = 1 << 20


def run_to_exit(peer, cid: str, args, *, stdin=subprocess.DEVNULL, data=None, timeout=120):
    """Create ``cid`` running ``args``, start its shim, start it; (status, stdout, stderr)."""
    peer.create(cid, args)
    shim = peer.shim(cid, stdin=stdin)
    peer.start(cid)
    out, err = shim.communicate(data, timeout=timeout)
    return shim.returncode, out, err


def pattern(n: int) -> bytes:
    """What ``yes abcdefghi | head -c n`` writes."""
    return (b"abcdefghi\n" * (n // 10 + 1))[:n]


# ---------------------------------------------------------------- every byte, then the status


async def test_8mib_written_right_before_exit_all_delivered(peer):
    n = 8 * MiB
    for i in range(3):  # the tail is in the pipe at exit: a shim that waits first loses it
        status, out, err = run_to_exit(peer, f"big{i}", ["sh", "-c", f"yes abcdefghi | head -c {n}; exit 0"])
        assert (status, err) == (0, b""), f"run {i}"
        assert len(out) == n and out == pattern(n), f"run {i}: {len(out)} of {n} bytes"


async def test_1mib_through_cat_with_stdin_piped(peer):
    data = os.urandom(MiB)
    status, out, err = run_to_exit(peer, "cat", ["cat"], stdin=subprocess.PIPE, data=data)
    assert (status, err) == (0, b"")
    assert len(out) == len(data) and hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


async def test_1mib_of_stderr_at_exit_stays_on_stderr(peer):
    n = MiB
    status, out, err = run_to_exit(peer, "err", ["sh", "-c", f"echo out; yes abcdefghi | head -c {n} >&2; exit 3"])
    assert (status, out) == (3, b"out\n")
    assert len(err) == n and err == pattern(n)


async def test_short_exec_output_and_status_every_time(peer):
    peer.run("host", ["sh", "-c", "sleep 60"])
    for i in range(8):
        eid = f"x{i}"
        peer.exec("host", eid, ["sh", "-c", "echo from-exec; echo to-err >&2; exit 5"])
        time.sleep(0.05 * (i % 3))  # the process may be long gone before its shim starts
        shim = peer.shim("host", eid)
        out, err = shim.communicate(timeout=60)
        assert (shim.returncode, out, err) == (5, b"from-exec\n", b"to-err\n"), f"exec {i}"


@pytest.mark.parametrize("script,status", [
    ("exit 0", 0),
    ("exit 3", 3),
    ("echo bye; kill -KILL $$", 128 + signal.SIGKILL),
    ("echo bye; kill -TERM $$", 128 + signal.SIGTERM),
])
async def test_exit_status_of_an_exec(peer, script, status):
    # exec'd, not init: a pid namespace's init ignores signals it has no handler for.
    peer.run("host", ["sh", "-c", "sleep 60"])
    peer.exec("host", "e", ["sh", "-c", script])
    shim = peer.shim("host", "e")
    out, err = shim.communicate(timeout=60)
    assert (shim.returncode, err) == (status, b"")
    assert out == (b"bye\n" if "kill" in script else b"")


async def test_signal_forwarded_by_the_shim_ends_the_process_128_plus_n(peer):
    peer.run("host", ["sh", "-c", "sleep 60"])
    peer.exec("host", "s", ["sh", "-c", "echo up; exec sleep 60"])
    shim = peer.shim("host", "s")
    assert shim.stdout.readline() == b"up\n"
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(60) == 128 + signal.SIGTERM
    assert shim.stderr.read() == b""


# ---------------------------------------------------------------- a read that is not EOF


@pytest.mark.parametrize("code,message,eof", [
    (h2.OUT_OF_RANGE, "EOF", True),       # ours, and the Kata 1.x peer's
    (h2.UNKNOWN, "EOF", True),            # a Go agent's bare io.EOF
    (h2.UNKNOWN, "unexpected EOF", False),
    (h2.UNKNOWN, "read |0: file already closed", False),
    (h2.NOT_FOUND, "Process c not found (container c)", False),
    (h2.UNAVAILABLE, "EOF", False),
])
def test_only_eof_ends_an_output_stream(code, message, eof):
    assert is_eof(RpcError(code, message)) is eof



def wait_until_pending(fd: int, timeout: float = 30.0) -> None:
    """Wait until the pipe ``fd`` holds unread bytes, then a little longer (it fills up)."""
    deadline = time.monotonic() + timeout
    while not struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]:
        assert time.monotonic() < deadline, "the shim relayed nothing"
        time.sleep(0.02)
    time.sleep(0.3)


def one_failure_line(err: bytes) -> str:
    assert err.count(b"\n") == 1 and err.startswith(b"kata-shim: "), err
    return err.decode()


async def test_read_failing_in_flight_is_a_failure_not_an_end(kata1x):
    # The process exits but a background child keeps its stdout open; another client waits
    # for the process, and the peer closes the pipes under the shim's blocked reads ("file
    # already closed") or forgets the process before the next read (NOT_FOUND): not EOF.
    kata1x.run("c", ["sh", "-c", "echo first; sleep 3 & exit 0"])
    shim = kata1x.shim("c")
    assert shim.stdout.readline() == b"first\n"
    assert kata1x.wait("c") == 0
    assert shim.wait(30) == exits.SHIM_FAILURE
    line = one_failure_line(shim.stderr.read())
    assert "not EOF" in line and ("file already closed" in line or "not found" in line)


async def test_read_answered_not_found_says_what_was_lost(kata1x):
    # The shim's reader stalls; the process is killed and waited for by another client while
    # output is still in its pipe: the shim's next read is NOT_FOUND, and that output is lost.
    kata1x.run("c", ["head", "-c", str(16 * MiB), "/dev/zero"])
    shim = kata1x.shim("c")
    wait_until_pending(shim.stdout.fileno())  # our pipe, the shim's chunk, the process's pipe fill up
    kata1x.signal("c", "c", signal.SIGKILL)
    assert kata1x.wait("c") == 128 + signal.SIGKILL
    got = len(shim.stdout.read())
    assert shim.wait(30) == exits.SHIM_FAILURE
    line = one_failure_line(shim.stderr.read())
    assert 0 < got < 16 * MiB
    assert "stdout" in line or "stderr" in line
    assert "not EOF" in line and "lost" in line


async def test_peer_killed_mid_stream_is_a_failure(kata1x):
    kata1x.run("c", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
    shim = kata1x.shim("c", None, "--reconnect-timeout", "1")
    assert shim.stdout.readline() == b"tick\n"
    kata1x.popen.kill()
    assert shim.wait(30) == exits.SHIM_FAILURE
    assert one_failure_line(shim.stderr.read()).startswith("kata-shim: lost the connection to the agent")
