"""Containers and their processes, run by runc.

A container's init is started with ``runc create`` (stdio wired before the
process runs) and ``runc start``; exec'd processes with ``runc exec -d``. Both
leave the process reparented to the agent, whose Reaper reports its exit.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os

import kata_cgroups as cgroups
from kata_log import cjson

from .config import AgentConfig
from .reaper import Reaper
from .runc import Runc, RuncError
from .stdio import ConsoleSocket, OutputBuffer, StdinWriter, make_pipe, set_onlcr

log = logging.getLogger("kata_agent.container")

_counter = itertools.count(1)


class Process:
    """A container's init or exec'd process: its pid, exit and stdio.

    Its output ends with its exit (see ``OutputBuffer.process_exited``): what it
    left in its pipes or terminal is delivered, then EOF, even while a
    descendant holds the other end; its terminal is closed then.
    """

    def __init__(self, container_id: str, exec_id: str, terminal: bool, is_init: bool) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.terminal = terminal
        self.is_init = is_init
        self.pid: int | None = None
        self.exit_future: asyncio.Future | None = None
        self.stdin: StdinWriter | None = None
        self.stdout = OutputBuffer(None, 1)
        self.stderr = OutputBuffer(None, 1)
        self.master_fd: int | None = None
        self.waited = False
        self._fds: list[int] = []  # child ends to close after runc returns

    @property
    def exited(self) -> bool:
        return self.exit_future is not None and self.exit_future.done()

    @property
    def exit_code(self) -> int | None:
        return self.exit_future.result() if self.exited else None

    def watch_exit(self, exit_future: asyncio.Future) -> None:
        """Follow the process's exit (a future of its exit code, from the Reaper)."""
        self.exit_future = exit_future
        exit_future.add_done_callback(self._on_exit)

    def _on_exit(self, _future: asyncio.Future) -> None:
        self.stdout.process_exited()
        self.stderr.process_exited()
        self._close_terminal()

    def _close_terminal(self) -> None:
        """Close the pty master once its output is taken: a descendant still holding
        the terminal sees it hung up instead of blocking. No input or resize after."""
        if self.master_fd is None:
            return
        if self.stdin is not None:
            self.stdin.abort()
        try:
            os.close(self.master_fd)
        except OSError:
            pass
        self.master_fd = None

    def finished(self) -> bool:
        """Exit collected by a WaitProcess and all output handed out."""
        return self.waited and self.stdout.drained and self.stderr.drained

    def close(self) -> None:
        """Drop everything: stdin, buffered output, the terminal, fds still held for runc."""
        if self.stdin is not None:
            self.stdin.abort()
        self.stdout.close()
        self.stderr.close()
        self._close_terminal()
        self._close_child_fds()

    def _close_child_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def describe(self) -> str:
        return f"process {self.exec_id!r} of container {self.container_id!r}"


class ContainerStatus(enum.Enum):
    """A container's status, in runc's words (``runc state``), plus ``creating``: the id is
    reserved while CreateContainer runs (such a container is not found by other calls).

    Formats as its value: ``f"{status}"`` is ``"running"``."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: The statuses a container can be in while runc knows it (not creating, not stopped).
LIVE = frozenset({ContainerStatus.CREATED, ContainerStatus.RUNNING, ContainerStatus.PAUSED})


class Container:
    """One container of the sandbox: runc's id, its bundle and state directory, its status, its
    init and exec'd processes (by exec id), cgroup paths and the mounts made for it."""

    def __init__(self, cid: str, bundle: str, state_dir: str) -> None:
        self.id = cid
        self.bundle = bundle
        self.state_dir = state_dir
        self.status = ContainerStatus.CREATING
        self.init: Process | None = None
        self.processes: dict[str, Process] = {}
        self.cgroup_paths: dict[str, str] = {}
        self.mounts: list[str] = []
        self.lock = asyncio.Lock()
        self.spec: dict = {}

    def get_process(self, exec_id: str) -> Process | None:
        """The process ``exec_id`` names ("" or the init's exec id: the init), else None."""
        if not exec_id or (self.init is not None and exec_id == self.init.exec_id):
            return self.init
        return self.processes.get(exec_id)


class ProcessLauncher:
    """Sets up a process's stdio and runs the runc command that starts it."""

    def __init__(self, config: AgentConfig, reaper: Reaper, runc: Runc) -> None:
        self.config = config
        self.reaper = reaper
        self.runc = runc
        self.sock_dir = os.path.join(config.state_dir, "c")
        os.makedirs(self.sock_dir, exist_ok=True)
        if len(self.sock_dir) > 80:  # sun_path is 108 bytes
            import tempfile  # imported here, not on the agent's start path

            self.sock_dir = tempfile.mkdtemp(prefix="kata-agent-c")

    async def launch(self, container: Container, proc: Process, runc_args: list[str],
                     pid_file: str) -> None:
        """runc_args: e.g. ["create", "--bundle", B] (the pid file, console socket
        and container id are appended here). On return proc.pid is set and its
        exit is watched; on failure everything is closed and RuncError raised."""
        cfg = self.config
        args = list(runc_args) + ["--pid-file", pid_file]
        console = None
        recv_task = None
        stdio = (None, None, None)
        try:
            if proc.terminal:
                console = ConsoleSocket(os.path.join(self.sock_dir, f"{next(_counter)}.sock"))
                args += ["--console-socket", console.path]
                recv_task = asyncio.ensure_future(console.receive_master())
            else:
                in_r, in_w = make_pipe(cfg.container_pipe_size)
                proc._fds.append(in_r)
                proc.stdin = StdinWriter(in_w)
                out_r, out_w = make_pipe(cfg.container_pipe_size)
                proc._fds.append(out_w)
                proc.stdout = OutputBuffer(out_r, cfg.stream_buffer_limit, cfg.read_chunk,
                                           name=f"{proc.describe()} stdout")
                err_r, err_w = make_pipe(cfg.container_pipe_size)
                proc._fds.append(err_w)
                proc.stderr = OutputBuffer(err_r, cfg.stream_buffer_limit, cfg.read_chunk,
                                           name=f"{proc.describe()} stderr")
                proc.stdout.start()
                proc.stderr.start()
                stdio = (in_r, out_w, err_w)
            args.append(container.id)
            await self.runc.run_stdio(*args, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            proc._close_child_fds()
            if recv_task is not None:
                master = await asyncio.wait_for(recv_task, 10)
                recv_task = None
                proc.master_fd = master
                try:
                    set_onlcr(master)
                except OSError:
                    pass
                proc.stdout = OutputBuffer(master, cfg.stream_buffer_limit, cfg.read_chunk,
                                           is_pty=True, owns_fd=False,
                                           name=f"{proc.describe()} terminal")
                proc.stdout.start()
                proc.stdin = StdinWriter(master, is_pty=True, owns_fd=False)
            with open(pid_file) as f:
                proc.pid = int(f.read().strip())
            proc.watch_exit(self.reaper.watch(proc.pid))
        except BaseException:
            if recv_task is not None:
                recv_task.cancel()
            proc.close()
            raise
        finally:
            if console is not None:
                console.close()


def remove_state_dir(path: str) -> None:
    """Remove ``path`` and what is in it, if it exists (shutil, and the compression modules
    it imports, only then: a first CreateContainer has nothing to remove)."""
    if not os.path.lexists(path):
        return
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def write_json(path: str, data: dict) -> None:
    """``data`` as JSON in ``path`` (write + rename; kata_log.cjson: no ``json`` import)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(cjson.dumps(data, indent=1))
    os.replace(tmp, path)


def record_cgroups(container: Container) -> None:
    if container.init and container.init.pid:
        container.cgroup_paths = cgroups.cgroup_paths(container.init.pid)


__all__ = ["Container", "ContainerStatus", "LIVE", "Process", "ProcessLauncher", "RuncError", "write_json",
           "remove_state_dir", "record_cgroups"]
