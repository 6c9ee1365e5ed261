"""The kill guard: forwards the one signal kata-shim cannot catch.

The reaper signals an exec'd process by signalling the pid in its --pid-file, this
kata-shim (containerd-shim-runc-v2 does ``kill(pid, sig)`` for an exec, with no runtime
call).  Every catchable signal is forwarded by the relay (shim.py); SIGKILL just ends the
shim, and the process in the guest would live on until its container is deleted.

So, before any thread starts, kata-shim forks a guard: a child holding the read end of a
pipe whose write end only the shim holds, and nothing else (its stdio is /dev/null, so the
reaper's pipes see EOF when the shim ends).  The shim's own exit (Relay.exit) writes one
byte first; any other end of the shim (SIGKILL, a crash) closes the pipe without it.  On
that bare EOF the guard sends SignalProcess(SIGKILL) for its process to the agent, then
exits; either way it exits at once.  The original Clear Containers shim did the same
(clearcontainers/shim#39).  A guard that outlives its shim is reparented to the reaper (a
subreaper) and reaped by it; it blocks every signal the shim blocks, so only SIGKILL ends
it early.
"""

from __future__ import annotations

import os
import signal

#: Written by the shim's own exit: the guard then has nothing to do.
DONE = b"x"
#: How long the guard keeps trying an unreachable proxy (the sandbox may be going away).
RECONNECT_TIMEOUT = 1.0


def start(socket_path: str, container_id: str, exec_id: str) -> int:
    """Fork the guard; returns the pipe's write end for :func:`disarm` (the shim keeps it)."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the guard
        try:
            os.close(write_end)
            _quiet(read_end)
            if _shim_killed(read_end):
                _kill_process(socket_path, container_id, exec_id)
        finally:
            os._exit(0)
    os.close(read_end)
    return write_end


def disarm(write_end: int | None) -> None:
    """Tell the guard the shim is ending by itself (never raises)."""
    if write_end is None:
        return
    try:
        os.write(write_end, DONE)
    except OSError:
        pass


def _quiet(keep: int) -> None:
    """Hold no descriptor of the shim's but ``keep``: stdio on /dev/null, the rest closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _shim_killed(read_end: int) -> bool:
    """Block until the shim ends: True unless it said so first."""
    while True:
        try:
            return os.read(read_end, 1) != DONE
        except InterruptedError:
            continue


def _kill_process(socket_path: str, container_id: str, exec_id: str) -> None:
    """SignalProcess(SIGKILL) for the shim's process; any failure is ignored (it may be gone)."""
    from kata_shim.client import AgentClient

    client = AgentClient(socket_path, container_id, exec_id, reconnect_timeout=RECONNECT_TIMEOUT, name="guard")
    try:
        client.signal(signal.SIGKILL)
    except Exception:
        pass
    finally:
        client.close()
