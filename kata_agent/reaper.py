"""Child reaping and process spawning for kata-agent.

The agent is PID 1 in a VM, or a child subreaper in the process sandbox and in
tests. runc's double fork (``runc create``, ``runc exec -d``) reparents every
container process to us, so exit statuses arrive for pids we never forked.
One component must own ``waitpid``: this one.

Design
------
* ``Reaper.install()`` sets PR_SET_CHILD_SUBREAPER (unless we are PID 1) and
  handles SIGCHLD on the running loop: ``loop.add_signal_handler`` on asyncio;
  on uvloop (which refuses SIGCHLD handlers) a Python ``signal.signal`` handler
  that schedules the reap with ``call_soon_threadsafe``; plus a 1 s safety poll.
  The reap runs ``waitpid(-1, WNOHANG)`` until nothing is left and dispatches
  each status by pid.
* A pid is *watched* with ``watch(pid)`` -> future of its exit code (0-255;
  128+N for a death by signal N). ``spawn()`` watches the pid it creates before
  returning, with no await in between, so the status cannot be missed.
* A status that arrives for a pid nobody watches yet (a process exec'd with
  ``runc exec -d`` that exits before we have read runc's ``--pid-file``) is
  kept for ``ORPHAN_TTL`` seconds; a later ``watch()`` of that pid gets it.
* Nothing else in the agent process may wait for children: do not use
  ``subprocess`` / ``asyncio.create_subprocess_*`` / uvloop subprocesses once
  the reaper is installed (their waits would race with ``waitpid(-1)``). Use
  ``Reaper.spawn()`` and ``Reaper.run()`` instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import signal
import time

log = logging.getLogger("kata_agent.reaper")

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_TTL = 120.0

# Signals a spawned program gets back at their default disposition (Python
# ignores SIGPIPE and SIGXFSZ, and exec keeps "ignored" dispositions).
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                    signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


def exit_code_from_status(status: int) -> int:
    """waitpid status -> shell-style exit code (128+signal for a signal death)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


def set_child_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(err))
        return False
    return True


def ensure_std_fds() -> None:
    """Make sure fds 0-2 are open, so pipes we create never land on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            nfd = os.open("/dev/null", os.O_RDWR)
            if nfd != fd:
                os.dup2(nfd, fd)
                os.close(nfd)


class Reaper:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, asyncio.Future] = {}
        self._orphans: dict[int, tuple[int, float]] = {}
        self._installed = False
        self._poll_handle: asyncio.TimerHandle | None = None
        self._mode = ""
        self._old_handler = None
        self.subreaper = False

    # -- installation ---------------------------------------------------
    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Become the reaper of the running loop's process (main thread).

        asyncio loop: loop.add_signal_handler(SIGCHLD). uvloop refuses that
        (it reserves SIGCHLD for its own subprocesses, which the agent never
        uses), so there a Python-level signal.signal handler schedules the
        reap through call_soon_threadsafe (uvloop's wakeup fd runs it). A slow
        safety poll catches anything a coalesced signal could hide."""
        if self._installed:
            return
        self._loop = loop or asyncio.get_running_loop()
        ensure_std_fds()
        if os.getpid() != 1:
            self.subreaper = set_child_subreaper()
        self._mode = "poll"
        try:
            self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
            self._mode = "loop"
        except RuntimeError:
            try:
                self._old_handler = signal.signal(signal.SIGCHLD, self._on_signal)
                self._mode = "signal"
            except ValueError as e:  # not the main thread
                log.warning("cannot install a SIGCHLD handler (%s); polling children", e)
        except (ValueError, NotImplementedError) as e:
            log.warning("cannot install a SIGCHLD handler (%s); polling children", e)
        self._installed = True
        self._schedule_poll()

    def _on_signal(self, signum, frame) -> None:
        try:
            self._loop.call_soon_threadsafe(self.reap)
        except RuntimeError:  # loop closed
            pass

    def _schedule_poll(self) -> None:
        self.reap()
        self._check_lost()
        delay = 0.05 if self._mode == "poll" else 1.0
        self._poll_handle = self._loop.call_later(delay, self._schedule_poll)

    def _check_lost(self) -> None:
        """A watched pid that no longer exists was never our child (or someone
        else waited for it): answer 255 rather than leave its waiters hanging.
        (Our own exited children stay zombies until reaped, so kill(0) works.)"""
        for pid, fut in list(self._waiters.items()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.error("pid %d vanished without being reaped by the agent (not a subreaper?)", pid)
                del self._waiters[pid]
                if not fut.done():
                    fut.set_result(255)
            except PermissionError:
                pass

    def uninstall(self) -> None:
        if not self._installed:
            return
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        try:
            if self._mode == "loop":
                self._loop.remove_signal_handler(signal.SIGCHLD)
            elif self._mode == "signal":
                signal.signal(signal.SIGCHLD, self._old_handler or signal.SIG_DFL)
        except Exception:  # loop closed / not main thread
            pass
        self._installed = False

    # -- reaping --------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            code = exit_code_from_status(status)
            fut = self._waiters.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(code)
            else:
                log.debug("reaped unwatched pid %d (exit %d)", pid, code)
                self._orphans[pid] = (code, time.monotonic())
        if self._orphans:
            cutoff = time.monotonic() - ORPHAN_TTL
            for pid in [p for p, (_, t) in self._orphans.items() if t < cutoff]:
                del self._orphans[pid]

    def watch(self, pid: int) -> asyncio.Future:
        """Future of pid's exit code. pid must be our child (or reparented to us)."""
        fut = self._waiters.get(pid)
        if fut is not None:
            return fut
        fut = self._loop.create_future()
        orphan = self._orphans.pop(pid, None)
        if orphan is not None:
            fut.set_result(orphan[0])
            return fut
        self._waiters[pid] = fut
        # The process may already be a zombie whose SIGCHLD we handled before
        # watching (status then sits in _orphans) or not yet delivered: reap now.
        self.reap()
        return fut

    # -- spawning -------------------------------------------------------
    def spawn(self, argv: list[str], *, stdin: int | None = None, stdout: int | None = None,
              stderr: int | None = None, env: dict[str, str] | None = None,
              setsid: bool = True, fds: tuple[int, ...] = ()) -> tuple[int, asyncio.Future]:
        """Start argv with the given fds as its stdio (None: /dev/null), and
        ``fds`` as its fds 3, 4, ... (every other fd of ours is close-on-exec).

        Returns (pid, future of the exit code)."""
        if not self._installed:
            raise RuntimeError("Reaper.install() must run before spawn()")
        # Copies numbered above every target, so no dup2 overwrites a source.
        extra = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds)) for fd in fds]
        try:
            actions = _stdio_actions(stdin, stdout, stderr)
            actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(extra)]
            pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env,
                                  file_actions=actions, setsid=setsid,
                                  setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        finally:
            for fd in extra:
                os.close(fd)
        # A fresh pid: any status kept for an earlier process with the same
        # number is stale. (No reap can run between posix_spawn and here.)
        self._orphans.pop(pid, None)
        return pid, self.watch(pid)

    async def run(self, argv: list[str], *, input: bytes | None = None,
                  env: dict[str, str] | None = None, timeout: float | None = 60.0,
                  fds: tuple[int, ...] = ()) -> tuple[int, bytes, bytes]:
        """Run argv to completion (``fds`` as in spawn()); returns (exit code,
        stdout, stderr). TimeoutError (the program killed) after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        in_r = in_w = None
        if input is not None:
            in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid, fut = self.spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w, env=env, fds=fds)
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                if fd is not None:
                    os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        if in_r is not None:
            os.close(in_r)
        tasks = [asyncio.ensure_future(read_all(out_r)), asyncio.ensure_future(read_all(err_r))]
        if in_w is not None:
            tasks.append(asyncio.ensure_future(write_all_and_close(in_w, input)))
        try:
            code = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await fut
            for t in tasks:
                t.cancel()
            raise TimeoutError(f"{' '.join(argv[:3])}... did not finish in {timeout}s (killed)")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        out = results[0] if isinstance(results[0], bytes) else b""
        err = results[1] if isinstance(results[1], bytes) else b""
        del loop
        return code, out, err


def _stdio_actions(stdin: int | None, stdout: int | None, stderr: int | None) -> list[tuple]:
    """posix_spawn file actions giving a child these fds as 0, 1, 2 (None: /dev/null)."""
    actions = []
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        if fd is None:
            flags = os.O_RDONLY if target == 0 else os.O_WRONLY
            actions.append((os.POSIX_SPAWN_OPEN, target, "/dev/null", flags, 0))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    return actions


async def read_all(fd: int) -> bytes:
    """Read a pipe to EOF without blocking the loop, then close it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks = []
    ev = asyncio.Event()
    loop.add_reader(fd, ev.set)
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                ev.clear()
                await ev.wait()
                continue
            if not data:
                break
            chunks.append(data)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


async def write_all_and_close(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    ev = asyncio.Event()
    try:
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                ev.clear()
                loop.add_writer(fd, ev.set)
                try:
                    await ev.wait()
                finally:
                    loop.remove_writer(fd)
            except BrokenPipeError:
                break
    finally:
        os.close(fd)


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))
