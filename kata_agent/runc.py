"""Thin async wrapper over the runc CLI, run through the agent's Reaper."""

from __future__ import annotations

import json
import logging
import os

from .reaper import Reaper

log = logging.getLogger("kata_agent.runc")


class RuncError(Exception):
    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"runc {command} failed (exit {code}): {message}")
        self.command = command
        self.code = code
        self.message = message


def _last_errors(log_path: str | None, limit: int = 3) -> str:
    """The last error lines of a runc --log-format json log."""
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    msgs = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            msgs.append(entry.get("msg", ""))
    return "; ".join(msgs[-limit:])


class Runc:
    def __init__(self, reaper: Reaper, binary: str = "runc", root: str = "/run/runc",
                 env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self.reaper = reaper
        self.binary = binary
        self.root = root
        self.env = dict(os.environ, **(env or {}))
        self.timeout = timeout
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _argv(self, args: list[str], log_path: str | None) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if log_path:
            argv += ["--log", log_path, "--log-format", "json"]
        return argv + args

    async def run(self, *args: str, input: bytes | None = None, log_path: str | None = None,
                  timeout: float | None = None) -> bytes:
        """Run a runc subcommand whose output we capture; returns its stdout."""
        argv = self._argv(list(args), log_path)
        code, out, err = await self.reaper.run(argv, input=input, env=self.env,
                                               timeout=timeout or self.timeout)
        if code != 0:
            msg = err.decode("utf-8", "replace").strip() or _last_errors(log_path) or out.decode(
                "utf-8", "replace").strip()
            raise RuncError(args[0], code, msg)
        return out

    async def run_stdio(self, *args: str, stdin: int | None, stdout: int | None,
                        stderr: int | None, log_path: str, timeout: float | None = None) -> None:
        """Run create / exec -d with the container process's stdio passed through.

        runc's own error output would go to the container's stderr pipe, so the
        error message is taken from runc's --log file instead."""
        import asyncio
        argv = self._argv(list(args), log_path)
        pid, fut = self.reaper.spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=self.env)
        try:
            code = await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)
        except asyncio.TimeoutError:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            await fut
            raise RuncError(args[0], -1, f"timed out after {timeout or self.timeout}s")
        if code != 0:
            raise RuncError(args[0], code, _last_errors(log_path) or "see " + log_path)

    # -- subcommands ----------------------------------------------------
    async def state(self, cid: str) -> dict:
        return json.loads(await self.run("state", cid))

    async def start(self, cid: str, log_path: str | None = None) -> None:
        await self.run("start", cid, log_path=log_path)

    async def kill(self, cid: str, sig: int, all_processes: bool = False,
                   log_path: str | None = None) -> None:
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, str(sig)]
        await self.run(*args, log_path=log_path)

    async def delete(self, cid: str, force: bool = True, log_path: str | None = None) -> None:
        args = ["delete"] + (["--force"] if force else []) + [cid]
        await self.run(*args, log_path=log_path)

    async def pause(self, cid: str, log_path: str | None = None) -> None:
        await self.run("pause", cid, log_path=log_path)

    async def resume(self, cid: str, log_path: str | None = None) -> None:
        await self.run("resume", cid, log_path=log_path)

    async def update(self, cid: str, resources: dict, log_path: str | None = None) -> None:
        await self.run("update", "--resources", "-", cid,
                       input=json.dumps(resources).encode(), log_path=log_path)

    async def ps_pids(self, cid: str) -> list[int]:
        out = await self.run("ps", "--format", "json", cid)
        return json.loads(out or b"[]") or []
