"""Host processes the runtime spawned and later finds again by a record, never by a bare pid.

A record is ``{"pid": int, "start": int}`` where ``start`` is the process's start time
(/proc/<pid>/stat field 22, clock ticks since boot). A pid whose start time differs was
recycled and is never trusted or signalled. Zombies count as dead: a detached process's
parent (the caller's subreaper) may not have reaped it yet. Standard library only, no
subprocess, and ``signal`` only where a signal is sent (it imports enum): ``state`` and ``list``
use this on their fast path.
"""

import os
import sys
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


def threads(pid: int) -> list[int]:
    """Thread ids of ``pid`` (/proc/<pid>/task), empty if it is gone."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Set the nice of the autogroup of ``pid``'s session (/proc/<pid>/autogroup); False when
    there is none (a kernel without CONFIG_SCHED_AUTOGROUP), ``pid`` is gone or it is not allowed.

    With autogroups on (/proc/sys/kernel/sched_autogroup_enabled, the default of most
    distributions' kernels), the scheduler shares the CPU between sessions first, each with
    its autogroup's weight, and a task's own nice counts only against the tasks of its own
    session (sched(7), "The autogroup feature"). A process started in a new session
    (setsid) therefore competes at nice 0 whatever its own nice, unless its autogroup's is set."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(f"{nice}\n")
        return True
    except OSError:
        return False


def keep_priority(pid: int) -> None:
    """For ``pid``, just started in a session of its own (start_new_session): when the calling
    thread runs below the default priority (nice > 0, e.g. the VM cache's starter at nice 19),
    give the new session's autogroup that nice too, so that the child and what it starts keep
    the priority they inherited (:func:`set_autogroup_nice` says why they would not). Best effort."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # the calling thread's (Linux: per thread)
    if nice > 0:
        set_autogroup_nice(pid, nice)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (/proc/<pid>/task/<tid>/children, depth first);
    a process that ended meanwhile is skipped."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for tid in threads(current):
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo += [int(child) for child in f.read().split()]
            except (OSError, ValueError):
                pass
    return found


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


def pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once the process has exited; the caller closes it), or
    None: no such process, or a kernel without pidfd_open (Linux < 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end (a zombie counts); True if it has.
    Woken by the process's exit through a pidfd; a POLL_INTERVAL poll where there is none."""
    fd = pidfd(pid)
    if fd is not None:
        import select

        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return not pid_alive(pid)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def wait_gone(rec: dict | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the recorded process to end; True if it did.

    Reaps it when it is our child (so a zombie of ours does not linger)."""
    if alive(rec):
        wait_exit(int(rec["pid"]), timeout)
    _reap(int(rec["pid"]) if rec and rec.get("pid") else 0)
    return not alive(rec)


def _reap(pid: int) -> None:
    if pid <= 0:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def terminate(rec: dict | None, timeout: float = 5.0, sig: int | None = None) -> bool:
    """``sig`` (default SIGTERM), wait ``timeout``, then SIGKILL; True once the process is gone.

    Where the kernel has pidfds the signals go through one opened while the record matched,
    so a pid recycled meanwhile is never signalled, and each wait is woken by the exit."""
    import signal

    sig = signal.SIGTERM if sig is None else sig
    fd = pidfd(int(rec["pid"])) if alive(rec) else None
    if fd is None or not alive(rec):  # no pidfd here, or it ended (or was replaced) meanwhile
        if fd is not None:
            os.close(fd)
        if not signal_process(rec, sig):
            return True
        if wait_gone(rec, timeout):
            return True
        signal_process(rec, signal.SIGKILL)
        return wait_gone(rec, 5.0)
    try:
        gone = _signal_and_wait(fd, sig, timeout) or _signal_and_wait(fd, signal.SIGKILL, 5.0)
    finally:
        os.close(fd)
    _reap(int(rec["pid"]))
    return gone


def _signal_and_wait(fd: int, sig: int, timeout: float) -> bool:
    """Send ``sig`` through the pidfd ``fd`` and wait up to ``timeout`` seconds for the process
    to end; True once it has (a process already gone counts)."""
    import select
    import signal

    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return True
    return bool(select.select([fd], [], [], timeout)[0])


def component_command(path: str, script: str, module: str) -> list[str]:
    """How to run a kata-py component (kata-proxy, kata-shim, kata-agent): ``path`` if configured,
    else the ``script`` installed beside this interpreter (the venv's bin/; ``make venv``'s
    launchers start without site), else ``python -m module``."""
    if path:
        return [path]
    beside = os.path.join(os.path.dirname(sys.executable), script)
    if os.access(beside, os.X_OK):
        return [beside]
    return [sys.executable, "-m", module]
