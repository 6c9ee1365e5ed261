"""Thin async wrapper over the runc CLI, run through the agent's Reaper.

Errors: every runc call gets its own error channel, a nameless temporary file
(``O_TMPFILE`` in runc's root directory) that runc writes its JSON log to as
``--log /proc/self/fd/3``. After the call the agent reads the error lines of
that file and closes it, which frees it: a failure quotes only its own cause,
never an earlier call's, and no log is left on disk, whatever happens to the
call (timeout, cancellation, agent crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from kata_log import cjson

from .reaper import Reaper

log = logging.getLogger("kata_agent.runc")

# runc's --log as seen by runc: the call's own log file, passed as fd 3.
CALL_LOG_FD = 3
CALL_LOG_PATH = f"/proc/self/fd/{CALL_LOG_FD}"
# At most this much of a call's log is read back (runc logs a few lines per call).
CALL_LOG_READ_MAX = 64 << 10


class RuncError(Exception):
    """A runc call failed: ``command`` (its subcommand), ``code`` (exit status, -1
    for a timeout) and ``message`` (runc's own error text for this call)."""

    def __init__(self, command: str, code: int, message: str) -> None:
        # runc 1.1 starts its own message with "runc create failed: ": said once, not twice
        own = f"runc {command} failed: "
        text = message[len(own):] if message.startswith(own) else message
        super().__init__(f"runc {command} failed (exit {code}): {text}")
        self.command = command
        self.code = code
        self.message = message


def log_errors(text: str, limit: int = 3) -> str:
    """The messages of the last ``limit`` error/fatal entries of a runc
    ``--log-format json`` log, joined by "; " (a message repeated back to back
    is given once). "" when there is none."""
    msgs: list[str] = []
    for line in text.splitlines():
        try:
            entry = cjson.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msg = str(entry.get("msg", "")).strip()
            if msg and (not msgs or msgs[-1] != msg):
                msgs.append(msg)
    return "; ".join(msgs[-limit:])


@contextlib.contextmanager
def call_log(directory: str):
    """A fresh, empty, nameless file for one runc call's log: yields its fd
    (close-on-exec; the spawn passes it as fd 3). Closed, and so gone, on exit. An O_TMPFILE
    (what tempfile.TemporaryFile makes on Linux, without importing tempfile, random and
    shutil on the first CreateContainer); tempfile where the filesystem has none."""
    try:
        fd = os.open(directory, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except OSError:
        import tempfile

        f = tempfile.TemporaryFile(dir=directory)
        fd = os.dup(f.fileno())
        os.set_inheritable(fd, False)
        f.close()
    try:
        yield fd
    finally:
        os.close(fd)


def read_call_log(fd: int) -> str:
    """The text runc wrote to a call's log (its last CALL_LOG_READ_MAX bytes)."""
    size = os.fstat(fd).st_size
    start = max(0, size - CALL_LOG_READ_MAX)
    return os.pread(fd, size - start, start).decode("utf-8", "replace")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


class Runc:
    """runc with a fixed ``--root`` and environment; each subcommand is a coroutine
    raising RuncError (message: this call's own errors) when runc fails."""

    def __init__(self, reaper: Reaper, binary: str = "runc", root: str = "/run/runc",
                 env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self.reaper = reaper
        self.binary = binary
        self.root = root
        self.env = dict(os.environ, **(env or {}))
        self.timeout = timeout
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        return [self.binary, "--root", self.root, "--log", CALL_LOG_PATH, "--log-format", "json",
                *args]

    async def run(self, *args: str, input: bytes | None = None,
                  timeout: float | None = None) -> bytes:
        """Run a runc subcommand whose output we capture; returns its stdout."""
        with call_log(self.root) as log_fd:
            code, out, err = await self.reaper.run(self._argv(args), input=input, env=self.env,
                                                   timeout=timeout or self.timeout, fds=(log_fd,))
            if code != 0:
                msg = log_errors(read_call_log(log_fd)) or _text(err) or _text(out) or "no message"
                raise RuncError(args[0], code, msg)
        return out

    async def run_stdio(self, *args: str, stdin: int | None, stdout: int | None,
                        stderr: int | None, timeout: float | None = None) -> None:
        """Run create / exec -d with the container process's stdio passed through.

        runc's own error output would go to the container's stderr pipe, so the
        error message is taken from this call's log instead."""
        timeout = timeout or self.timeout
        with call_log(self.root) as log_fd:
            pid, fut = self.reaper.spawn(self._argv(args), stdin=stdin, stdout=stdout,
                                         stderr=stderr, env=self.env, fds=(log_fd,))
            try:
                code = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await fut
                raise RuncError(args[0], -1, f"timed out after {timeout}s")
            if code != 0:
                raise RuncError(args[0], code, log_errors(read_call_log(log_fd)) or "no message")

    # -- subcommands ----------------------------------------------------
    async def state(self, cid: str) -> dict:
        return cjson.loads(await self.run("state", cid))

    async def start(self, cid: str) -> None:
        await self.run("start", cid)

    async def kill(self, cid: str, sig: int, all_processes: bool = False) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, str(sig)]
        await self.run(*args)

    async def delete(self, cid: str, force: bool = True) -> None:
        args = ["delete"] + (["--force"] if force else []) + [cid]
        await self.run(*args)

    async def pause(self, cid: str) -> None:
        await self.run("pause", cid)

    async def resume(self, cid: str) -> None:
        await self.run("resume", cid)

    async def update(self, cid: str, resources: dict) -> None:
        await self.run("update", "--resources", "-", cid, input=cjson.dumps(resources).encode())

    async def ps_pids(self, cid: str) -> list[int]:
        out = await self.run("ps", "--format", "json", cid)
        return cjson.loads(out or b"[]") or []
