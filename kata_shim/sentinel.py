"""kata-shim's sentinel: the process in the guest dies when its shim is killed.

The reaper signals a process by signalling the pid it was given (--pid-file), which for
kata-runtime is the process's kata-shim; containerd-shim-runc-v2 does ``kill(pid, sig)``
itself for an exec (runc has no "kill exec" command).  The relay (shim.py) forwards
every catchable signal with SignalProcess, but SIGKILL just ends the shim, and the
process in the guest would live on: it keeps its container busy, holds its pipes and
counts in ``ctr task ps`` (tests/reaper: ``test_exec_killed``, ``test_vm_exec_killed*``).
The original Clear Containers shim had the same hole (clearcontainers/shim#39).

So the shim starts a sentinel before its threads: ``/bin/sh`` (posix_spawn, no fork of
the interpreter) running ``read`` on the read end of a pipe whose write end only the shim
holds (close-on-exec, and the shim runs nothing else).  The shim's own exit
(shim.Relay.exit) writes :data:`DONE` first and reaps the sentinel: the shell exits.  Any
other end of the shim (SIGKILL, a crash, the OOM killer) closes the pipe without it: the
shell's ``read`` sees EOF and the shell execs ``python -m kata_shim.sentinel`` with the
shim's flags, which sends SignalProcess(SIGKILL) for the shim's process through the same
proxy socket (NOT_FOUND: the process had already ended), logs one line to the shim's log
and exits.  It is then reparented to the caller's subreaper (containerd-shim) or init,
which reaps it.  Only that rare path pays for an interpreter start.

Why a shell and not a fork of the shim: a forked interpreter keeps every page the shim
writes after the fork (libpython's data, the heaps; gc.freeze() does not help), a waiting
dash almost nothing (bench/RESULTS.md, "kata-shim's sentinel").

What the sentinel holds: the pipe on fd 0, /dev/null on fds 1 and 2, nothing else of the
shim's (every other fd is close-on-exec or closed by a spawn action), so the caller's
pipes see EOF and a pty's master sees its slave closed when the shim ends.  It is in a
session of its own (setsid): no controlling terminal, and a signal to the shim's process
group (``kill -KILL -PGID``, a terminal's ^C or hang-up) does not reach it, so even a
group SIGKILL reaches the guest through it.  It keeps the signal mask the shim had (every
forwarded signal blocked), so only SIGKILL ends it early.  ``ps`` shows it as
``kata-sentinel -c read ...`` (comm ``sh``), then as ``python -m kata_shim.sentinel``.
"""

from __future__ import annotations

import _signal  # the C module (no enum import): see shim.py
import os
import sys
import time

#: Written by the shim's own exit (the process's end was relayed, or the shim gave up): the
#: shell's ``read`` gets the line "x" and exits.  A bare EOF is the shim killed.
DONE = b"x\n"
SHELL = "/bin/sh"
#: $@ is the kill path's command line: it runs only if the shim did not say DONE.
SCRIPT = 'read -r said; [ "$said" = x ] || exec "$@"'
NAME = "kata-sentinel"
#: Pause between two tries of an agent that did not answer.
RETRY_PAUSE_S = 0.05


class Sentinel:
    """The shim's handle on its sentinel: ``pid`` (our child) and ``fd``, the pipe's write end."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd

    def done(self) -> None:
        """Tell the sentinel the shim ends by itself: it exits without a call.  Never raises."""
        if self.fd < 0:
            return
        try:
            os.write(self.fd, DONE)
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1

    def reap(self) -> None:
        """Wait for the sentinel to exit (it does at once after :meth:`done`).  Never raises."""
        try:
            os.waitpid(self.pid, 0)
        except OSError:  # ChildProcessError: already reaped
            pass


def kill_command(opts) -> list:
    """The kill path's argv: this interpreter, ``-m kata_shim.sentinel`` and the flags of
    ``opts`` (kata_shim.flags.Options) it needs."""
    args = [sys.executable, "-m", "kata_shim.sentinel", "--agent", opts.agent, "--container", opts.container,
            "--exec-id", opts.exec_id, "--reconnect-timeout", repr(float(opts.reconnect_timeout)),
            "--log", opts.log_level, "--log-format", opts.log_format]
    if opts.log_file:
        args += ["--log-file", opts.log_file]
    return args


def start(opts, log) -> Sentinel | None:
    """Spawn the sentinel of the process ``opts.container``/``opts.exec_id`` (kata_shim.flags
    Options).  Returns None, with a warning in ``log``, when it cannot be spawned (no
    /bin/sh, a pids limit): the shim then runs without one."""
    read_end, write_end = os.pipe()  # both close-on-exec (PEP 446)
    actions = [(os.POSIX_SPAWN_DUP2, read_end, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
    try:
        pid = os.posix_spawn(SHELL, [NAME, "-c", SCRIPT, NAME, *kill_command(opts)], os.environ,
                             file_actions=actions, setsid=True)
    except OSError as e:
        os.close(write_end)
        log.warning("no sentinel: a SIGKILL of this shim will not reach its process", error=str(e))
        return None
    finally:
        os.close(read_end)
    return Sentinel(pid, write_end)


def _inherited_fds() -> list:
    """Our descriptors above 2 that an exec would keep (not close-on-exec): those the
    shim's own caller passed down."""
    fds = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing known to close
        return fds
    for name in names:
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
        except OSError:  # the directory's own fd, closed by now
            pass
    return fds


# ------------------------------------------------------------------ the kill path


def kill_process(opts) -> str:
    """SignalProcess(SIGKILL) for ``opts``'s process through the proxy; what came of it.

    A transport failure or UNAVAILABLE is tried again for ``opts.reconnect_timeout``
    seconds, as the shim does, but only while the proxy's socket exists (a sandbox going
    away removes it: nobody is left to tell).  Never raises."""
    from kata_grpc import h2
    from kata_grpc.client import Channel, TransportError
    from kata_grpc.h2 import RpcError
    from kata_shim import pb

    request = pb.signal_request(pb.process_prefix(opts.container, opts.exec_id), _signal.SIGKILL)
    channel = Channel(opts.socket_path, recv_size=4096)
    deadline = time.monotonic() + opts.reconnect_timeout
    while True:
        try:
            channel.unary("SignalProcess", request, timeout=max(deadline - time.monotonic(), 1.0))
            return "killed"
        except RpcError as e:
            if e.code == h2.NOT_FOUND:
                return "already ended"
            if e.code != h2.UNAVAILABLE:
                return f"refused: {e}"
            failure = str(e)
        except TransportError as e:
            failure = str(e)
        if time.monotonic() >= deadline or not os.path.exists(opts.socket_path):
            return f"not sent: {failure}"
        time.sleep(RETRY_PAUSE_S)


def main(argv=None) -> int:
    """``python -m kata_shim.sentinel SHIM-FLAGS``: the shim was killed; kill its process and
    say so in the shim's log.  Exit status 0 (2 for flags it cannot parse)."""
    from kata_shim import exits, flags
    from kata_shim.log import Logger

    try:
        opts = flags.parse(sys.argv[1:] if argv is None else argv)
        log = Logger(opts.log_level, opts.log_format, file=opts.log_file,
                     container=opts.container, exec_id=opts.exec_id)
    except (flags.UsageError, OSError) as e:
        sys.stderr.write(f"kata-sentinel: {e}\n")
        return exits.USAGE
    outcome = kill_process(opts)
    log.warning("kata-shim was killed before relaying its process's end: SignalProcess(SIGKILL) "
                "sent by its sentinel", outcome=outcome)
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
