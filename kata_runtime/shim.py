"""kata-shim, one per container process (the init and every exec): how the runtime spawns it.

The shim is what the caller sees as the container process: its pid goes to
``--pid-file``, it holds the caller's stdio (or, with a terminal, the slave of a pty
whose master went to ``--console-socket``), forwards signals, and exits with the
process's status. ``create`` and ``exec --detach`` spawn it detached: the runtime exits
and the caller's subreaper (containerd-shim) inherits and reaps it, as it would runc's
container process. ``run`` and attached ``exec`` keep it as a child and wait for it.

With a terminal the shim gets the pty slave on fds 0-2 and as its controlling terminal
(``setsid --ctty``, util-linux: no fork when the child is not a group leader, so the pid
is the shim's), so SIGWINCH from a resize of the master reaches it and it relays the size
(TtyWinResize). Flags: kata_shim/flags.py.
"""

from __future__ import annotations

import os

from kata_runtime import procs
from kata_runtime.errors import KataError


class ShimError(KataError):
    """kata-shim could not be started."""


def command(settings: dict) -> list[str]:
    """kata-shim's argv prefix from [shim.kata] (``path``)."""
    return procs.component_command(settings.get("path", ""), "kata-shim", "kata_shim")


def argv(settings: dict, proxy_socket: str, container_id: str, exec_id: str, *, terminal: bool,
         log_path: str) -> list[str]:
    """The shim's full command line (original Kata 1.x flags plus ours, kata_shim/flags.py)."""
    args = [*command(settings), "--agent", f"unix://{proxy_socket}", "--container", container_id,
            "--exec-id", exec_id, "--log-file", log_path]
    if terminal:
        args.append("--terminal")
    if settings.get("debug"):
        args.append("--debug")
    return args


class Detached:
    """A shim spawned detached (:func:`spawn`): its pid; never waited for by us."""

    def __init__(self, pid: int):
        self.pid = pid


def spawn(args: list[str], *, tty_slave: int | None = None, detach: bool = True):
    """Start the shim. Without ``tty_slave`` it inherits our stdin/stdout/stderr (the
    caller's stdio, as runc's container process). With ``tty_slave`` (an fd) that pty is
    its stdio and controlling terminal. ``detach``: own session, and never waited for by
    us (the caller's subreaper reaps it): a :class:`Detached`; else a subprocess.Popen
    (:func:`wait`). Either way its working directory is / and it inherits no fd but its
    stdio. Raises ShimError."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if detach and tty_slave is None:
        return _spawn_detached(args, env)
    import subprocess

    kwargs: dict = {"env": env, "cwd": "/", "close_fds": True}
    if tty_slave is not None:
        import shutil

        setsid = shutil.which("setsid")
        if setsid is None:
            raise ShimError("a terminal needs util-linux setsid(1) on PATH")
        args = [setsid, "--ctty", *args]
        kwargs.update(stdin=tty_slave, stdout=tty_slave, stderr=tty_slave)
    elif not os.isatty(0):
        # Attached without a terminal: its own process group, so a ^C at the caller's
        # terminal reaches the shim once (forwarded by `wait`), not twice. (Attached to our
        # terminal it stays in our foreground group: it must read the tty and get SIGWINCH.)
        kwargs["process_group"] = 0
    try:
        child = subprocess.Popen(args, **kwargs)
    except OSError as e:
        raise ShimError(f"cannot run {args[0]}: {e.strerror}") from None
    if detach:
        child.returncode = 0  # not ours to reap: do not let Popen's finaliser wait for it
        return Detached(child.pid)
    return child


def _spawn_detached(args: list[str], env: dict) -> Detached:
    """What ``subprocess.Popen(args, env=env, cwd="/", close_fds=True, start_new_session=True)``
    does, with posix_spawn: the create path of every container spawns a shim, and the
    subprocess module's import (threading, signal, selectors, locale) costs it ~5 ms. Every
    inheritable fd above 2 is closed in the child, and SIGPIPE and SIGXFSZ, which Python
    ignores, are default again (Popen's restore_signals); posix_spawn has no working
    directory, so ours is / around the call (and restored: relative paths of the caller
    still resolve)."""
    import _signal  # the C module: signal's Python layer imports enum

    closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
    here = os.open(".", os.O_PATH | os.O_CLOEXEC)  # O_PATH: a directory we may enter but not read
    try:
        os.chdir("/")
        try:
            pid = os.posix_spawnp(args[0], args, env, file_actions=closes, setsid=True,
                                  setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
        except OSError as e:
            raise ShimError(f"cannot run {args[0]}: {e.strerror}") from None
        finally:
            os.fchdir(here)
    finally:
        os.close(here)
    return Detached(pid)


def _inheritable_fds() -> list[int]:
    """This process's open fds that a child would inherit (no close-on-exec)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.append(int(name))
        except (OSError, ValueError):
            pass  # the listing's own fd, closed by now
    return fds


def record(child) -> dict:
    """The shim's process record (pid + start time; ``child``: what :func:`spawn` returned). A shim already gone (an exec'd
    process that ended at once) gets start -1: never alive, never signalled."""
    try:
        return procs.record(child.pid)
    except ProcessLookupError:
        return {"pid": child.pid, "start": -1}


#: What an attached runtime (``run``, ``exec`` without --detach) forwards to its shim (names
#: of the signal module's constants: it is imported only by `wait`).
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def wait(child) -> int:
    """Wait for an attached shim (a subprocess.Popen from :func:`spawn`), forwarding our
    signals to it (as runc forwards to its container process); returns its exit status,
    128+N if signal N ended it."""
    import signal

    previous = {}

    def forward(signum, _frame):
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED:
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, forward)
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status
