"""Fixtures for interop tests against the unmodified Debian hashicorp/yamux.

The Go peer (tests/interop/goyamux) is built once per test session into a
temporary directory, offline, in GOPATH mode against
/usr/share/gocode/src/github.com/hashicorp/yamux. Tests are skipped only when
`go` itself is missing; a failing build is a test failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.fixtures import short_dir
from tests.support.processes import REPO

GOPATH = "/usr/share/gocode"

# ------------------------------------------------------------------ Go build


@pytest.fixture(scope="session")
def goyamux(tmp_path_factory) -> str:
    go = shutil.which("go")
    if go is None:
        pytest.skip("`go` is not installed: apt-get install golang-go golang-github-hashicorp-yamux-dev")
    out = tmp_path_factory.mktemp("goyamux")
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH=GOPATH,
        GOFLAGS="",
        GOPROXY="off",
        GOCACHE=str(out / "gocache"),
    )
    binary = out / "goyamux"
    proc = subprocess.run(
        [go, "build", "-o", str(binary), "./tests/interop/goyamux"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(
            "building the Go yamux peer failed (is golang-github-hashicorp-yamux-dev installed?):\n"
            + proc.stdout + proc.stderr
        )
    return str(binary)


sockdir = short_dir("yx")  # for unix sockets (sun_path is 108 bytes)


# ------------------------------------------------------------------ Go processes


class GoProcess:
    """A running goyamux process; stdout lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str], errlog: Path):
        self.proc = proc
        self.argv = argv
        self.errlog = errlog
        self.lines: list[str] = []
        self._seen = 0
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    def stderr(self) -> str:
        try:
            return self.errlog.read_text()[-4000:]
        except OSError:
            return ""

    def describe(self) -> str:
        return f"{' '.join(self.argv)}\nstdout: {self.lines}\nstderr: {self.stderr()}"

    async def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Wait for the next not yet consumed stdout line starting with prefix."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for idx in range(self._seen, len(self.lines)):
                if self.lines[idx].startswith(prefix):
                    self._seen = idx + 1
                    return self.lines[idx]
            if self._reader.done():  # every line has been read and scanned
                raise AssertionError(f"{prefix!r} never printed; process ended\n{self.describe()}")
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {prefix!r}\n{self.describe()}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait(self, timeout: float) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"process still running after {timeout} s\n{self.describe()}") from None
        await self._reader
        return rc

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


class GoPeers:
    """Starts goyamux processes and kills every one of them at teardown."""

    def __init__(self, binary: str, workdir: str):
        self.binary = binary
        self.workdir = Path(workdir)
        self.procs: list[GoProcess] = []

    async def start(self, *args: str) -> GoProcess:
        errlog = self.workdir / f"go{len(self.procs)}.stderr"
        argv = [self.binary, *args]
        with open(errlog, "wb") as errf:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=errf,
            )
        gp = GoProcess(proc, argv, errlog)
        self.procs.append(gp)
        return gp

    async def server(self, sock: str, *args: str) -> GoProcess:
        gp = await self.start("server", "-listen", sock, *args)
        await gp.expect("READY", timeout=20)
        return gp

    async def client(self, sock: str, *args: str, timeout: float = 60.0) -> GoProcess:
        """Run a Go client to completion; asserts that it exits with status 0."""
        gp = await self.start("client", "-connect", sock, *args)
        rc = await gp.wait(timeout)
        assert rc == 0, f"Go client failed (exit {rc})\n{gp.describe()}"
        return gp

    async def close(self) -> None:
        for gp in self.procs:
            await gp.kill()


@pytest.fixture
async def go(goyamux, sockdir):
    peers = GoPeers(goyamux, sockdir)
    yield peers
    await peers.close()


# ------------------------------------------------------------------ Python server


class PyServer:
    """A unix-socket listener that makes a yamux server Session per connection
    and runs handler(session) for it. Exceptions raised by handlers, and by
    tasks they register with spawn(), are collected in .errors."""

    def __init__(self, sockdir: str):
        self.sockdir = sockdir
        self.errors: list[BaseException] = []
        self.sessions: list = []
        self.tasks: set[asyncio.Task] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.listeners: list[socket.socket] = []

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())

    async def start(self, handler, *, config=None, name: str = "py.sock", transport: str = "streams") -> str:
        """Listen on sockdir/name. transport "streams": Session(reader, writer)
        over asyncio.start_unix_server; "socket": Session.from_socket (the
        Protocol fast path) over a plain listening socket."""
        from yamux import Session

        path = os.path.join(self.sockdir, name)

        async def run(session):
            self.sessions.append(session)
            await handler(session)

        if transport == "streams":
            async def on_connection(reader, writer):
                self.spawn(run(Session(reader, writer, client=False, config=config)))

            self.servers.append(await asyncio.start_unix_server(on_connection, path))
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(16)
            listener.setblocking(False)
            self.listeners.append(listener)

            async def accept_loop():
                loop = asyncio.get_running_loop()
                while True:
                    conn, _ = await loop.sock_accept(listener)
                    self.spawn(run(await Session.from_socket(conn, client=False, config=config)))

            self.spawn(accept_loop())
        return path

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for listener in self.listeners:
            listener.close()
        for session in self.sessions:
            await session.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def pyserver(sockdir):
    server = PyServer(sockdir)
    yield server
    await server.close()
