"""The process sandbox: `hypervisor = "process"` — kata-agent as a host process.

**No VM isolation.** The "guest" is kata-agent running on the host kernel as
root, in fresh mount, pid, uts and ipc namespaces only (no user, network or
cgroup namespace, no seccomp, same kernel, same root filesystem). It exists so
that the proxy, shim and runtime — the production code — can be tested in
seconds without QEMU. Never use it to run untrusted containers.

What it looks like from the host, file by file (see hypervisor/base.py):

* ``<sandbox>/kata.sock`` — the driver binds and listens on it BEFORE the agent
  starts and hands the listening socket to the agent (``--channel-fd N``); the
  agent accepts one connection. To kata-proxy this is exactly QEMU's
  ``-chardev socket,server=on,wait=off`` virtio-serial socket: the path exists
  when `start()` returns, connecting succeeds at once (the kernel backlog holds
  the connection until the agent accepts it), and the yamux bytes reach the
  agent unchanged. When the agent is gone, connecting is refused.
* ``<sandbox>/shared/`` — passed as ``--shared-dir``: CreateSandbox's 9p
  Storage (source ``kataShared``) becomes a bind mount of this directory at
  the Storage's mount point inside the agent's mount namespace, so a rootfs
  placed at ``shared/<cid>/rootfs`` is the container's root, as with 9p.
* ``<sandbox>/console.log`` — the agent's stdout and stderr, like a VM console.
* ``<sandbox>/process.pid`` — pid of the sandbox process, for `stop()` from
  another kata-runtime invocation.

How it runs: ``unshare --mount --pid --uts --ipc --fork --mount-proc
--kill-child=SIGKILL -- kata-agent --channel-fd N --shared-dir ...
--state-dir /run/kata-containers/agent``, where ``kata-agent`` is the script installed beside
the runtime's interpreter (make venv's launcher: no site, no runpy), or ``python -m kata_agent``
when [hypervisor.process] ``path`` names a Python or no script is installed. `pid` is unshare's pid (it stays in
the host pid namespace and waits); the agent is its only child and PID 1 of
the new pid namespace, where it mounts a private tmpfs on /run/kata-containers
(its state and runc's ``--root`` live there) with all mounts private, so
nothing reaches the host mount table. Containers are still run by runc, inside
the agent's namespaces. Killing the agent (PID 1 of the namespace) kills every
process in it, containers included; killing unshare kills the agent
(``--kill-child``).

`start()` returns once the agent reports ready (``--ready-fd``: its gRPC
server is up and it waits for the host on the channel), or raises
HypervisorError with the console's last lines if it died or timed out. The
same in two synchronous halves, for a runtime that starts kata-proxy between
them without an event loop: `spawn()` (returns at once) and `wait_spawned()`
(wakes on the ready pipe: READY=1, or its end when the agent dies).

`stop()`: SIGTERM to the agent (unshare blocks SIGTERM itself), wait up to
`timeout`, then SIGKILL to unshare (and so to the agent); then the socket and
the pid file are removed. The console log is kept.

Only the agent's program is spawned; nothing of kata_agent is imported (the cgroup
helpers that remove a killed sandbox's leftover cgroups are kata_cgroups, below both).
"""

from __future__ import annotations

import os
import re
import select
import time

from kata_cgroups import remove_cgroup_trees
from kata_runtime.hypervisor.base import Hypervisor, HypervisorError
from kata_runtime.procs import cmdline, component_command, keep_priority, kill_pid, read_pid_file, wait_exit
from kata_runtime.state import remove_file, write_atomic


def _log():
    """This driver's warnings (stdlib logging, imported only for one: a create that takes a
    cached sandbox imports this module and never spawns, so logging, shutil, socket and
    subprocess, ~10 ms of imports, are loaded only where they are used)."""
    import logging

    return logging.getLogger("kata_runtime.hypervisor.process")

AGENT_STATE_DIR = "/run/kata-containers/agent"
READY_TIMEOUT = 60.0
UNIX_PATH_MAX = 107


def agent_command(python: str | None) -> list[str]:
    """The process sandbox's agent argv prefix: ``python -m kata_agent`` for a configured Python
    ([hypervisor.process] path), else as procs.component_command finds kata-agent (the script
    beside this interpreter). `kata-runtime check` asks the same."""
    if python:
        return [python, "-m", "kata_agent"]
    return component_command("", "kata-agent", "kata_agent")


class ProcessSandbox(Hypervisor):
    """kata-agent on the host in new mount/pid/uts/ipc namespaces (no VM isolation)."""

    kind = "process"

    def __init__(
        self,
        sandbox_dir: str | os.PathLike,
        sandbox_id: str,
        *,
        python: str | None = None,
        log_level: str = "info",
        log_format: str = "text",
        ready_timeout: float = READY_TIMEOUT,
        unshare: str = "unshare",
        env: dict[str, str] | None = None,
        agent_args: list[str] | tuple[str, ...] = (),
    ):
        super().__init__(sandbox_dir, sandbox_id)
        #: The Python that runs ``-m kata_agent`` when one is configured, else None (the script).
        self.python = python
        self.log_level = log_level
        self.log_format = log_format
        self.ready_timeout = ready_timeout
        self.unshare = unshare
        self.env = env
        self.agent_args = list(agent_args)
        self._proc = None  # the subprocess.Popen of unshare, once spawned
        #: Read end of the agent's ready pipe between spawn() and the READY=1 (or its end).
        self._ready_r: int | None = None
        self._ready_got = b""
        #: The pod's network namespace the agent joins (kata_runtime.network), or None.
        self.netns: str | None = None

    @classmethod
    def from_config(cls, sandbox_dir, sandbox_id, settings: dict, debug: bool = False) -> "ProcessSandbox":
        """[hypervisor.process]: ``path`` (a Python that runs ``-m kata_agent``; "" = the
        kata-agent script beside the runtime's Python, see agent_command),
        ``unshare``, ``ready_timeout`` (seconds)."""
        return cls(sandbox_dir, sandbox_id, python=settings.get("path") or None,
                   unshare=settings.get("unshare") or "unshare",
                   ready_timeout=float(settings.get("ready_timeout") or READY_TIMEOUT),
                   log_level="debug" if debug else "info")

    # ---------------------------------------------------------------- state
    @property
    def cgroup_parent(self) -> str:
        """This sandbox's own cgroup (below the runtime's) for its containers' cgroups."""
        return "kata-sandbox-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.sandbox_id)

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = read_pid_file(self.pid_file)
        if pid is not None and self._is_ours(pid):
            return pid
        return None

    def agent_pid(self) -> int | None:
        """Host pid of kata-agent (PID 1 inside the sandbox), if running."""
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _is_ours(self, pid: int) -> bool:
        """Guard against pid reuse: the process must be this sandbox's unshare."""
        args = cmdline(pid) or []
        agent = b"kata_agent" in args or any(arg.endswith(b"/kata-agent") for arg in args)
        return agent and os.fsencode(self.shared_dir) in args

    def agent_command(self) -> list[str]:
        """The agent's argv prefix for this sandbox's configured Python (:func:`agent_command`)."""
        return agent_command(self.python)

    def attach_network(self, pod_network) -> None:
        """Join the pod's network namespace (a kata_runtime.network.PodNetwork, model tcfilter):
        the agent and its containers see the pod's veth itself (no tap: there is no VM NIC)."""
        if pod_network.path and pod_network.model == "tcfilter":
            self.netns = pod_network.path

    def _argv(self, unshare: str, fd: int, ready_fd: int) -> list[str]:
        join = ["nsenter", f"--net={self.netns}", "--"] if self.netns else []
        return [
            *join, unshare, "--mount", "--pid", "--uts", "--ipc", "--fork", "--mount-proc", "--kill-child=SIGKILL", "--",
            *self.agent_command(),
            "--channel-fd", str(fd),
            "--shared-dir", self.shared_dir,
            "--state-dir", AGENT_STATE_DIR,
            "--cgroup-parent", self.cgroup_parent,
            "--log", self.log_level,
            "--log-format", self.log_format,
            "--ready-fd", str(ready_fd),
            *self.agent_args,
        ]

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        # The agent runs with cwd "/"; make sure it still finds the project when it is used
        # from a source tree rather than installed.
        import importlib.util

        spec = importlib.util.find_spec("kata_agent")
        if spec is not None and spec.origin:
            root = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
            parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            if root not in parts:
                env["PYTHONPATH"] = os.pathsep.join([root, *parts])
        return env

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.spawn()
        await self._wait_ready()

    def spawn(self) -> None:
        """Spawn unshare and the agent, and return at once (``wait_spawned`` or ``start`` waits for
        READY=1). On return the channel socket listens and the pid file is written. Raises
        HypervisorError (unshare missing, the socket path too long, already running) or OSError."""
        if self.pid is not None:
            raise HypervisorError(f"sandbox {self.sandbox_id} is already running (pid {self.pid})")
        import shutil
        import subprocess

        unshare = shutil.which(self.unshare)
        if unshare is None:
            raise HypervisorError(f"process sandbox needs {self.unshare!r} (util-linux) on PATH")
        os.makedirs(self.sandbox_dir, mode=0o750, exist_ok=True)
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        remove_file(self.pid_file)
        listener = self._listen()
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            console = os.open(self.console_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            try:
                fd = listener.fileno()
                self._proc = subprocess.Popen(
                    self._argv(unshare, fd, ready_w),
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=console,
                    pass_fds=(fd, ready_w),
                    cwd="/",
                    env=self._environ(),
                    start_new_session=True,
                )
            finally:
                os.close(console)
        except BaseException:
            os.close(ready_r)
            remove_file(self.channel_socket_path)
            raise
        finally:
            listener.close()  # the agent holds the only copies now
            os.close(ready_w)
        keep_priority(self._proc.pid)
        self._ready_r, self._ready_got = ready_r, b""
        os.set_blocking(ready_r, False)
        write_atomic(self.pid_file, f"{self._proc.pid}\n")

    def wait_spawned(self) -> None:
        """After `spawn`: block until the agent's READY=1 (a select on its ready pipe, no polling),
        at most ``ready_timeout`` seconds. Raises HypervisorError (with the console's last lines)
        after killing the sandbox when the agent exits, closes the pipe or times out."""
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready_seen():
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail_start(None)
            select.select([self._ready_r], [], [], left)

    async def _wait_ready(self) -> None:
        """`wait_spawned` for an event loop: woken by the ready pipe (loop.add_reader)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready_seen():
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail_start(None)
            readable = loop.create_future()
            loop.add_reader(self._ready_r, lambda: readable.done() or readable.set_result(None))
            try:
                await asyncio.wait_for(readable, left)
            except asyncio.TimeoutError:
                pass
            finally:
                loop.remove_reader(self._ready_r)

    def _ready_seen(self) -> bool:
        """Read what the ready pipe has (non-blocking): True at READY=1 (the pipe is closed then),
        False while nothing more came; its end before READY=1 fails the start."""
        try:
            chunk = os.read(self._ready_r, 64)
        except BlockingIOError:
            return False
        if not chunk:
            self._fail_start(b"")
        self._ready_got += chunk
        if b"READY=1" not in self._ready_got:
            return False
        self._close_ready()
        return True

    def _close_ready(self) -> None:
        if self._ready_r is not None:
            os.close(self._ready_r)
            self._ready_r = None

    def _fail_start(self, chunk: bytes | None) -> None:
        """Kill what `spawn` started (unshare, and so the agent) and raise HypervisorError saying why:
        ``chunk`` b"" the pipe ended, None the wait timed out."""
        self._close_ready()
        rc = self._proc.poll()
        why = f"exited with status {rc}" if rc is not None else (
            "closed its ready pipe" if chunk == b"" else f"not ready after {self.ready_timeout:g}s")
        self._kill_now()
        raise HypervisorError(f"process sandbox {self.sandbox_id}: the agent {why} at start: "
                              f"{self._console_tail() or 'no output'} (console: {self.console_log_path})")

    def _kill_now(self, timeout: float = 5.0) -> None:
        """SIGKILL the agent and unshare (a failed start: nothing to ask nicely), reap unshare,
        then `_cleanup`."""
        import signal
        import subprocess

        agent = self.agent_pid()
        if self._proc.poll() is None:
            kill_pid(self._proc.pid, signal.SIGKILL)  # --kill-child: the agent follows
        if agent is not None:
            kill_pid(agent, signal.SIGKILL)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log().warning("process sandbox %s: pid %d survived SIGKILL", self.sandbox_id, self._proc.pid)
        self._cleanup()

    def _listen(self):
        """The channel socket, listening (a socket.socket)."""
        import socket

        path = self.channel_socket_path
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise HypervisorError(f"channel socket path is too long for a unix socket ({len(path)} > "
                                  f"{UNIX_PATH_MAX} bytes): {path}; use a shorter sandbox directory")
        remove_file(path)  # stale: nothing runs (checked by the caller)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(1)
        except OSError as exc:
            sock.close()
            raise HypervisorError(f"cannot listen on {path}: {exc.strerror}") from exc
        return sock

    async def stop(self, timeout: float = 5.0) -> None:
        """The driver interface's stop: :meth:`stop_now` in a thread (its waits are pidfd
        selects), so a caller's event loop keeps running. Raises HypervisorError."""
        import asyncio

        await asyncio.to_thread(self.stop_now, timeout)

    def stop_now(self, timeout: float = 5.0) -> None:
        """`stop` without an event loop, for the runtime: the same steps and errors, each wait
        woken by the process's exit (a pidfd; a 10 ms poll where there is none)."""
        import signal

        pid = self.pid
        if pid is None:
            self._reap()
            self._cleanup()
            return
        agent = self.agent_pid()
        if agent is not None:
            kill_pid(agent, signal.SIGTERM)
        if not self._exited(pid, timeout):
            _log().warning("process sandbox %s: agent still running %gs after SIGTERM; killing it",
                        self.sandbox_id, timeout)
            kill_pid(pid, signal.SIGKILL)  # --kill-child: the agent, and its namespace, follow
            if agent is not None:
                kill_pid(agent, signal.SIGKILL)
            if not self._exited(pid, 5.0):
                raise HypervisorError(f"process sandbox {self.sandbox_id}: pid {pid} survived SIGKILL")
        if agent is not None and not self._exited(agent, 5.0):
            raise HypervisorError(f"process sandbox {self.sandbox_id}: agent pid {agent} survived its sandbox")
        self._cleanup()

    def _exited(self, pid: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``pid`` to end (a zombie counts); True if it has.
        Our own unshare child is reaped."""
        gone = wait_exit(pid, timeout)
        self._reap()
        return gone

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()

    def _cleanup(self) -> None:
        remove_file(self.channel_socket_path)
        remove_file(self.pid_file)
        # A killed agent could not remove its containers' (now empty) cgroups.
        remove_cgroup_trees(self.cgroup_parent)

    def _console_tail(self, lines: int = 5) -> str:
        try:
            with open(self.console_log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(tail[-lines:])
