"""Host processes the runtime spawned and later finds again by a record, never by a bare pid.

A record is ``{"pid": int, "start": int}`` where ``start`` is the process's start time
(/proc/<pid>/stat field 22, clock ticks since boot). A pid whose start time differs was
recycled and is never trusted or signalled. Zombies count as dead: a detached process's
parent (the caller's subreaper) may not have reaped it yet. Standard library only, no
subprocess: ``state`` and ``list`` use this on their fast path.
"""

from __future__ import annotations

import os
import signal
import time

POLL_INTERVAL = 0.01


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...] (field 3 on)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    return stat[stat.rfind(b")") + 2:].split()


def read_pid_file(path: str) -> int | None:
    """The pid written in ``path``, or None (no file, or not a number)."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cmdline(pid: int) -> list[bytes] | None:
    """The arguments of ``pid`` (/proc/<pid>/cmdline), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a child we know by its pid alone)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X", b"x")


def kill_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; a process already gone is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20:
        return None
    return int(fields[19])


def record(pid: int) -> dict:
    """A record of a running process (raises ProcessLookupError if it is already gone)."""
    start = start_time(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return {"pid": pid, "start": start}


def alive(rec: dict | None) -> bool:
    """True while the recorded process runs: same start time, and not a zombie."""
    if not rec or not rec.get("pid"):
        return False
    fields = _stat_fields(int(rec["pid"]))
    if not fields or len(fields) < 20:
        return False
    if fields[0] in (b"Z", b"X", b"x"):
        return False
    return int(fields[19]) == rec.get("start")


def signal_process(rec: dict | None, sig: int) -> bool:
    """Send ``sig`` to the recorded process if it is still that process; True if sent."""
    if not alive(rec):
        return False
    try:
        os.kill(int(rec["pid"]), sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(rec: dict | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the recorded process to end; True if it did.

    Reaps it when it is our child (so a zombie of ours does not linger)."""
    deadline = time.monotonic() + timeout
    while alive(rec):
        _reap(int(rec["pid"]))
        if time.monotonic() >= deadline:
            return not alive(rec)
        time.sleep(POLL_INTERVAL)
    _reap(int(rec["pid"]) if rec and rec.get("pid") else 0)
    return True


def _reap(pid: int) -> None:
    if pid <= 0:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def terminate(rec: dict | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> bool:
    """``sig`` (SIGTERM), wait ``timeout``, then SIGKILL; True once the process is gone."""
    if not signal_process(rec, sig):
        return True
    if wait_gone(rec, timeout):
        return True
    signal_process(rec, signal.SIGKILL)
    return wait_gone(rec, 5.0)
