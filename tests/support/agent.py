"""The agent in the tests: the one grpc.aio client of its API, the agent service run alone, and the
runtime-shaped driver of the shim tests.

* ``AgentClient(target)``: AgentService (``stub``, also ``agent``) and Health (``health``) stubs on
  one grpc.aio channel, to an ``AgentServer`` or to kata-proxy's socket (``"unix:" + proxy.listen``),
  with container helpers (create/start/exec/wait/read/write...; those that make a rootfs need an
  AgentServer).
* ``AgentServer()``: ``python -m kata_agent.standalone`` on a temp unix socket (tests/agent,
  bench/agent_bench.py).
* ``Agent(sandbox, proxy)``: the calls kata-runtime makes (CreateSandbox, CreateContainer,
  StartContainer, ExecProcess, SignalProcess, WaitProcess) through the runtime's own client
  (kata_runtime.agent.Agent), and the real kata-shim started as the runtime starts it
  (``agent.shim(...)``); ``Kata1xPeer(workdir)``: the same on tests/peers/kata1x_agent.py, which
  keeps the Kata 1.x agent's rules (a waited process is forgotten) and runs the process args on
  the host.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from tests.support.oci import busybox_spec, process, shared_storage
from tests.support.processes import REPO, command
from tests.support.rootfs import build_busybox_rootfs

MAX_MESSAGE = 64 << 20
KATA1X_PEER = REPO / "tests" / "peers" / "kata1x_agent.py"


def is_eof(e) -> bool:
    """The agent's end of a stream: OUT_OF_RANGE "EOF" (Go agent: UNKNOWN "EOF")."""
    import grpc

    return e.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNKNOWN) and e.details() == "EOF"


# ------------------------------------------------------------------ the agent service alone


class AgentServer:
    """A standalone agent service process on a temp unix socket (runc's --root, the bundles and
    the cgroup parent are its own)."""

    def __init__(self, *, buffer_limit: int | None = None, loop: str = "uvloop",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="kag", dir="/tmp")
        self.socket = os.path.join(self.dir, "agent.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.shared = os.path.join(self.dir, "shared")
        self.runc_root = os.path.join(self.state_dir, "runc")
        os.makedirs(self.shared)
        self.template = os.path.join(self.dir, "rootfs-template")
        build_busybox_rootfs(self.template)
        self.log_path = os.path.join(self.dir, "agent.log")
        self.cgroup_parent = f"kata-test-{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "kata_agent.standalone", "--socket", self.socket,
                "--state-dir", self.state_dir, "--shared-mount", self.shared,
                "--log-level", "info", "--loop", loop,
                "--cgroup-parent", self.cgroup_parent]
        if buffer_limit:
            argv += ["--buffer-limit", str(buffer_limit)]
        argv += list(extra_args)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("agent did not start:\n" + Path(self.log_path).read_text())

    def create_sandbox(self) -> None:
        import grpc
        from katapb import agent_pb2, agent_pb2_grpc

        with grpc.insecure_channel("unix:" + self.socket) as ch:
            agent_pb2_grpc.AgentServiceStub(ch).CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="kata-test", sandbox_id="sb"), timeout=10)

    def make_rootfs(self, cid: str) -> str:
        """<shared>/<cid>/rootfs: a copy of the busybox template (hard links)."""
        dest = os.path.join(self.shared, cid, "rootfs")
        shutil.copytree(self.template, dest, symlinks=True, copy_function=os.link)
        return dest

    def leftover_containers(self) -> list[str]:
        if not os.path.isdir(self.runc_root):
            return []
        out = subprocess.run(["runc", "--root", self.runc_root, "list", "-q"],
                             capture_output=True, text=True)
        return out.stdout.split()

    def stop(self) -> None:
        from kata_cgroups import remove_cgroup_trees

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for cid in self.leftover_containers():
            subprocess.run(["runc", "--root", self.runc_root, "delete", "--force", cid],
                           capture_output=True)
        remove_cgroup_trees(self.cgroup_parent)  # a killed agent leaves them behind
        self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ the client


class AgentClient:
    """grpc.aio stubs of AgentService (``stub``, alias ``agent``) and Health (``health``) on one
    channel to ``target``: an AgentServer, or an address (``"unix:" + proxy.listen``).

    Containers made with ``create`` (an AgentServer's) are removed by ``close``."""

    def __init__(self, target) -> None:
        import grpc
        from katapb import agent_pb2_grpc, health_pb2_grpc

        self.server = target if isinstance(target, AgentServer) else None
        address = "unix:" + self.server.socket if self.server else target
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                              ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.stub = self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.containers: list[str] = []

    async def close(self) -> None:
        import grpc
        from katapb import agent_pb2

        for cid in self.containers:
            try:
                await self.stub.RemoveContainer(
                    agent_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            shutil.rmtree(f"{self.server.shared}/{cid}", ignore_errors=True)
        await self.channel.close()

    # -- containers -----------------------------------------------------
    def spec(self, cid: str, args, **kw):
        return busybox_spec(cid, args, **kw)

    async def create(self, args, *, cid: str | None = None, terminal: bool = False,
                     spec=None, start: bool = False) -> str:
        from katapb import agent_pb2

        cid = cid or "c-" + uuid.uuid4().hex[:12]
        self.server.make_rootfs(cid)
        self.containers.append(cid)
        if spec is None:
            spec = self.spec(cid, args, terminal=terminal)
        await self.stub.CreateContainer(
            agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=spec), timeout=30)
        if start:
            await self.start(cid)
        return cid

    async def start(self, cid: str) -> None:
        from katapb import agent_pb2

        await self.stub.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)

    async def exec(self, cid: str, args, *, exec_id: str | None = None, terminal=False) -> str:
        from katapb import agent_pb2

        exec_id = exec_id or "e-" + uuid.uuid4().hex[:8]
        await self.stub.ExecProcess(agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=exec_id, process=process(args, terminal=terminal)), timeout=30)
        return exec_id

    async def wait(self, cid: str, exec_id: str | None = None, timeout: float = 60) -> int:
        from katapb import agent_pb2

        r = await self.stub.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id or cid), timeout=timeout)
        return r.status

    async def signal(self, cid: str, sig: int, exec_id: str | None = None) -> None:
        from katapb import agent_pb2

        await self.stub.SignalProcess(agent_pb2.SignalProcessRequest(
            container_id=cid, exec_id=cid if exec_id is None else exec_id, signal=sig), timeout=10)

    # -- stdio ----------------------------------------------------------
    async def read(self, cid: str, exec_id: str | None = None, *, stderr: bool = False,
                   n: int = 1 << 20, timeout: float | None = 60) -> bytes:
        """One ReadStdout/ReadStderr; b"" at EOF."""
        import grpc
        from katapb import agent_pb2

        call = self.stub.ReadStderr if stderr else self.stub.ReadStdout
        try:
            r = await call(agent_pb2.ReadStreamRequest(container_id=cid, exec_id=exec_id or cid, len=n),
                           timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if is_eof(e):
                return b""
            raise
        assert r.data, "an OK read must carry data"
        return r.data

    async def read_all(self, cid: str, exec_id: str | None = None, *, stderr: bool = False,
                       n: int = 1 << 20, sink=None) -> bytes | int:
        """Read to EOF. With sink(data), returns the byte count instead of the data."""
        chunks = []
        total = 0
        while True:
            data = await self.read(cid, exec_id, stderr=stderr, n=n)
            if not data:
                break
            total += len(data)
            if sink is not None:
                sink(data)
            else:
                chunks.append(data)
        return total if sink is not None else b"".join(chunks)

    async def write(self, cid: str, data: bytes, exec_id: str | None = None) -> int:
        from katapb import agent_pb2

        r = await self.stub.WriteStdin(agent_pb2.WriteStreamRequest(
            container_id=cid, exec_id=exec_id or cid, data=data), timeout=60)
        return r.len

    async def close_stdin(self, cid: str, exec_id: str | None = None) -> None:
        from katapb import agent_pb2

        await self.stub.CloseStdin(agent_pb2.CloseStdinRequest(container_id=cid, exec_id=exec_id or cid),
                                   timeout=10)

    async def run(self, args, **kw) -> tuple[bytes, bytes, int]:
        """Create, start, read both streams to EOF, wait: (stdout, stderr, status)."""
        cid = await self.create(args, **kw)
        await self.start(cid)
        out, err = await asyncio.gather(self.read_all(cid), self.read_all(cid, stderr=True))
        return out, err, await self.wait(cid)


# ------------------------------------------------------------------ the shim tests' driver


class Agent:
    """The agent behind the proxy, driven as kata-runtime drives it (through its own client,
    kata_runtime.agent.Agent: ``client``; ``pb`` is katapb.agent_pb2), and the real kata-shim."""

    name = "kata-agent"

    def __init__(self, sandbox, proxy):
        self.sandbox = sandbox
        self.proxy = proxy
        self._connect(proxy.listen_socket)

    def _connect(self, socket: str) -> None:
        from kata_runtime.agent import Agent as RuntimeClient

        self.client = RuntimeClient(socket, timeout=30)
        self.pb = self.client.pb
        self.socket = socket
        self.address = f"unix://{socket}"
        self.shims: list[subprocess.Popen] = []

    def create_sandbox(self) -> None:
        self.client.create_sandbox(self.sandbox.sandbox_id, "kata-sb", [shared_storage().SerializeToString()])

    def create(self, cid: str, args, *, terminal: bool = False) -> None:
        build_busybox_rootfs(Path(self.sandbox.shared_dir) / cid / "rootfs")
        self.client.create_container(cid, busybox_spec(cid, list(args), terminal=terminal).SerializeToString())

    def start(self, cid: str) -> None:
        self.client.start_container(cid)

    def run(self, cid: str, args, *, terminal: bool = False) -> None:
        self.create(cid, args, terminal=terminal)
        self.start(cid)

    def exec(self, cid: str, exec_id: str, args, *, terminal: bool = False) -> None:
        self.client.exec_process(cid, exec_id, process(list(args), terminal=terminal).SerializeToString())

    def signal(self, cid: str, exec_id: str, signum: int) -> None:
        self.client.signal_process(cid, exec_id, signum)

    def wait(self, cid: str, exec_id: str | None = None) -> int:
        """WaitProcess as another client (a runtime) would call it; returns the status."""
        reply = self.client.call("WaitProcess", self.pb.WaitProcessRequest(container_id=cid, exec_id=exec_id or cid),
                                 timeout=60)
        return self.pb.WaitProcessResponse.FromString(reply).status

    def shim_args(self, cid: str, exec_id: str | None = None, *extra: str, address: str | None = None):
        return [*command("kata-shim"), "--agent", address or self.address, "--container", cid,
                "--exec-id", exec_id or cid, *extra]

    def shim(self, cid: str, exec_id: str | None = None, *extra: str, address: str | None = None,
             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.shim_args(cid, exec_id, *extra, address=address),
                             stdin=stdin, stdout=stdout, stderr=stderr, **kw)
        self.shims.append(p)
        return p

    def close(self) -> None:
        for p in self.shims:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self.client.close()


class Kata1xPeer(Agent):
    """tests/peers/kata1x_agent.py as a subprocess, driven with the same calls as ``Agent``.

    Its processes run on the host (the OCI process args; no rootfs, no runc).  ``popen`` is
    the peer itself (a test may kill it).
    """

    name = "kata1x"

    def __init__(self, workdir: str):
        self.sandbox = self.proxy = None
        path = os.path.join(workdir, "kata1x.sock")
        self.popen = subprocess.Popen([sys.executable, str(KATA1X_PEER), "--listen", path],
                                      stdout=subprocess.PIPE)
        if self.popen.stdout.readline() != b"READY\n":
            self.popen.kill()
            raise RuntimeError("the Kata 1.x peer did not start")
        self._connect(path)

    def create_sandbox(self) -> None:
        self.client.create_sandbox("", "kata-sb", [])

    def create(self, cid: str, args, *, terminal: bool = False) -> None:
        from katapb import oci_pb2

        self.client.create_container(cid, oci_pb2.Spec(Process=process(list(args), terminal=terminal)).SerializeToString())

    def close(self) -> None:
        super().close()
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.popen.stdout.close()
