"""The agent service run alone (python -m kata_agent.standalone) and a small
grpc.aio client of it, for tests/agent and bench/agent_bench.py."""

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

import grpc

from kata_cgroups import remove_cgroup_trees
from katapb import agent_pb2, agent_pb2_grpc, health_pb2_grpc, oci_pb2
from tests.fixtures.oci import busybox_spec, process
from tests.fixtures.rootfs import build_busybox_rootfs

REPO = Path(__file__).resolve().parents[2]

MAX_MESSAGE = 64 << 20


def is_eof(e: grpc.aio.AioRpcError) -> bool:
    """The agent's end of a stream: OUT_OF_RANGE "EOF" (Go agent: UNKNOWN "EOF")."""
    return e.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNKNOWN) and e.details() == "EOF"


class AgentServer:
    """A standalone agent service process on a temp unix socket."""

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


class AgentClient:
    def __init__(self, server) -> None:
        self.server = server
        self.channel = grpc.aio.insecure_channel(
            "unix:" + server.socket,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE)])
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.containers: list[str] = []

    async def close(self) -> None:
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
    def spec(self, cid: str, args, **kw) -> oci_pb2.Spec:
        return busybox_spec(cid, args, **kw)

    async def create(self, args, *, cid: str | None = None, terminal: bool = False,
                     spec: oci_pb2.Spec | None = None, start: bool = False) -> str:
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
        await self.stub.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)

    async def exec(self, cid: str, args, *, exec_id: str | None = None, terminal=False) -> str:
        exec_id = exec_id or "e-" + uuid.uuid4().hex[:8]
        await self.stub.ExecProcess(agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=exec_id, process=process(args, terminal=terminal)), timeout=30)
        return exec_id

    async def wait(self, cid: str, exec_id: str | None = None, timeout: float = 60) -> int:
        r = await self.stub.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id or cid), timeout=timeout)
        return r.status

    async def signal(self, cid: str, sig: int, exec_id: str | None = None) -> None:
        await self.stub.SignalProcess(agent_pb2.SignalProcessRequest(
            container_id=cid, exec_id=cid if exec_id is None else exec_id, signal=sig), timeout=10)

    # -- stdio ----------------------------------------------------------
    async def read(self, cid: str, exec_id: str | None = None, *, stderr: bool = False,
                   n: int = 1 << 20, timeout: float | None = 60) -> bytes:
        """One ReadStdout/ReadStderr; b"" at EOF."""
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
        r = await self.stub.WriteStdin(agent_pb2.WriteStreamRequest(
            container_id=cid, exec_id=exec_id or cid, data=data), timeout=60)
        return r.len

    async def close_stdin(self, cid: str, exec_id: str | None = None) -> None:
        await self.stub.CloseStdin(agent_pb2.CloseStdinRequest(container_id=cid, exec_id=exec_id or cid),
                                   timeout=10)

    async def run(self, args, **kw) -> tuple[bytes, bytes, int]:
        """Create, start, read both streams to EOF, wait: (stdout, stderr, status)."""
        cid = await self.create(args, **kw)
        await self.start(cid)
        out, err = await asyncio.gather(self.read_all(cid), self.read_all(cid, stderr=True))
        return out, err, await self.wait(cid)
