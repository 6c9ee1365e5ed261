"""`kata-shim --terminal` whatever its own stdio is, and whatever happens to its terminal.

A reaper gives a detached tty process no terminal at all (stdin /dev/null or a pipe, all
stdio pipes): the shim must relay it anyway, with the size of whichever fd is a terminal, or
none.  When the shim's own terminal hangs up, the shim must still end when the process does,
and a SIGTERM (forwarded) must end it: no exit path may hang (issue 11, item 4).

Each test runs against our agent and the Kata 1.x peer (``peer``, tests/shim/conftest.py).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

TIMEOUT = 30

# Loops until the terminal has a size (the shim sends it once it has started), prints it.
# (busybox's `stty size` fails on a 0x0 terminal, coreutils' prints "0 0".)
PRINT_SIZE = ('i=0; while [ $i -lt 100 ]; do s=$(stty size 2>/dev/null); '
              '[ -n "$s" ] && [ "$s" != "0 0" ] && break; i=$((i+1)); sleep 0.05; done; '
              'echo "size=$s"; exit 4')


def exec_on_a_terminal(peer, args):
    """An exec'd terminal process ``e`` in container ``host`` (not init: signals reach it)."""
    peer.run("host", ["sleep", "60"])
    peer.exec("host", "e", args, terminal=True)


def read_until(master: int, text: bytes, timeout: float = TIMEOUT, shim=None) -> bytes:
    """Read the pty ``master`` until ``text``; AssertionError (with what came) otherwise."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while text not in got:
        assert time.monotonic() < deadline, f"{text!r} not seen in {bytes(got)!r}"
        if select.select([master], [], [], 0.1)[0]:
            try:
                got += os.read(master, 65536)
            except OSError as e:  # EIO: no slave open any more (the shim is gone)
                status = None if shim is None else shim.wait(TIMEOUT)
                raise AssertionError(f"{text!r} not seen in {bytes(got)!r}: {e}; shim status {status}")
    return bytes(got)


# ---------------------------------------------------------------- units


def test_window_size_skips_what_is_no_usable_terminal():
    from kata_shim import tty

    master, slave = pty.openpty()
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 90, 0, 0))
        assert tty.window_size((null, r, slave)) == (25, 90)
        assert tty.window_size((null, r, w)) is None
        os.close(master)  # hung up
        assert tty.window_size((slave,)) in (None, (25, 90))  # never raises
        with pytest.raises(tty.ERRORS):
            tty.make_raw(null)
    finally:
        for fd in (slave, r, w, null):
            os.close(fd)


EXIT_ON_A_HUNG_UP_TERMINAL = """
import os, pty, sys
from kata_shim import shim, tty
from kata_shim.log import Logger

master, slave = pty.openpty()
os.dup2(slave, 0)
relay = shim.Relay(None, Logger("warn", "text", use_syslog=False))
relay._tty_saved = tty.make_raw(0)
os.close(master)  # the terminal hangs up: restoring it fails with termios.error
relay.exit(7, sys.argv[1] if len(sys.argv) > 1 else None)
"""


@pytest.mark.parametrize("message", [None, "it failed"])
def test_exit_on_a_hung_up_terminal_ends_the_process(message):
    args = [sys.executable, "-c", EXIT_ON_A_HUNG_UP_TERMINAL] + ([message] if message else [])
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 7
    assert p.stderr == (b"kata-shim: it failed\n" if message else b"")


def test_exit_whose_failure_line_blocks_ends_within_the_grace():
    # stderr is a full pipe nobody reads: the watchdog ends the process with the status.
    code = ("import fcntl, os, sys\n"
            "from kata_shim import shim\n"
            "from kata_shim.log import Logger\n"
            "os.set_blocking(2, False)\n"
            "try:\n"
            "    while True: os.write(2, b'x' * 65536)\n"
            "except BlockingIOError: pass\n"
            "os.set_blocking(2, True)\n"
            "shim.Relay(None, Logger('warn', 'text', use_syslog=False)).exit(9, 'blocked')\n")
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stderr=w)
        assert p.wait(TIMEOUT) == 9
        assert time.monotonic() - t0 < 2.0 + 10  # EXIT_GRACE_S plus a loaded machine's start-up
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------- no usable terminal


async def test_terminal_with_stdin_from_dev_null_takes_the_size_from_stdout(peer):
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 90, 0, 0))
        exec_on_a_terminal(peer, ["sh", "-c", PRINT_SIZE])
        shim = peer.shim("host", "e", "--terminal", stdin=subprocess.DEVNULL, stdout=slave)
        assert shim.wait(TIMEOUT) == 4, shim.stderr.read()
        assert b"size=25 90" in read_until(master, b"size=")
        assert shim.stderr.read() == b""
    finally:
        os.close(master)
        os.close(slave)


async def test_terminal_with_stdin_a_closed_pipe(peer):
    r, w = os.pipe()
    os.close(w)
    exec_on_a_terminal(peer, ["sh", "-c", "echo hi; exit 4"])
    shim = peer.shim("host", "e", "--terminal", stdin=r)
    os.close(r)
    out, err = shim.communicate(timeout=TIMEOUT)
    assert (shim.returncode, err) == (4, b"")
    assert b"hi" in out


async def test_terminal_with_all_stdio_pipes(peer):
    exec_on_a_terminal(peer, ["sh", "-c", 'read line; echo "got $line"; exit 4'])
    shim = peer.shim("host", "e", "--terminal", stdin=subprocess.PIPE)
    out, err = shim.communicate(b"input\n", timeout=TIMEOUT)
    assert (shim.returncode, err) == (4, b"")
    assert b"got input" in out


# ---------------------------------------------------------------- the terminal hangs up


def shim_on_its_own_terminal(peer):
    """The shim in a new session whose controlling terminal is a pty the test owns.

    Returns (shim, master); the test's slave fd is closed, so closing ``master`` hangs the
    terminal up (the shim gets SIGHUP, its reads and writes there fail with EIO).  `setsid
    -c` (util-linux) makes the session, not a preexec_fn: forking this process, which has
    gRPC threads, for Python code in the child can abort the child.
    """
    master, slave = pty.openpty()
    try:
        shim = subprocess.Popen(["setsid", "-c", *peer.shim_args("host", "e", "--terminal")],
                                stdin=slave, stdout=slave, stderr=slave)
        peer.shims.append(shim)
    finally:
        os.close(slave)
    return shim, master


async def test_terminal_hangs_up_then_the_process_exits(peer):
    exec_on_a_terminal(peer, ["sh", "-c", "trap '' HUP; echo ready; sleep 1; echo after; exit 7"])
    shim, master = shim_on_its_own_terminal(peer)
    read_until(master, b"ready", shim=shim)  # the shim is relaying, its terminal raw
    os.close(master)
    assert shim.wait(TIMEOUT) == 7


async def test_terminal_hangs_up_then_sigterm_ends_it(peer):
    exec_on_a_terminal(peer, ["sh", "-c", "trap '' HUP; echo ready; exec sleep 60"])
    shim, master = shim_on_its_own_terminal(peer)
    read_until(master, b"ready", shim=shim)
    os.close(master)
    time.sleep(0.5)
    assert shim.poll() is None  # the process still runs: so does its relay
    shim.send_signal(signal.SIGTERM)  # forwarded: the process dies of it, the shim follows
    assert shim.wait(TIMEOUT) == 128 + signal.SIGTERM
