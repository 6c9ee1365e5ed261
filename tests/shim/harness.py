"""Helpers shared by the kata-shim tests and bench/shim_bench.py (not fixtures).

* ``Agent``: a synchronous grpcio client of the agent behind kata-proxy, with the
  calls kata-runtime will make (CreateSandbox, CreateContainer, StartContainer,
  ExecProcess, SignalProcess);
* ``Agent.shim(...)``: the real kata-shim as a subprocess, started exactly as a
  runtime would (the installed ``kata-shim`` script, else ``python -m kata_shim``);
* ``Kata1xPeer``: the same calls against tests/peers/kata1x_agent.py (the Kata 1.x agent's
  rules: a waited process is forgotten), which runs the process args on the host.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def shim_command() -> list[str]:
    exe = Path(sys.executable).with_name("kata-shim")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "kata_shim"]


class Agent:
    """The agent behind the proxy, driven with the agent API as kata-runtime will."""

    name = "kata-agent"

    def __init__(self, sandbox, proxy):
        self.sandbox = sandbox
        self.proxy = proxy
        self._connect(proxy.listen_socket)

    def _connect(self, socket: str) -> None:
        import grpc
        from katapb import agent_pb2, agent_pb2_grpc

        self.pb = agent_pb2
        self.socket = socket
        self.address = f"unix://{socket}"
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.shims: list[subprocess.Popen] = []

    def create_sandbox(self) -> None:
        from tests.fixtures.oci import shared_storage

        self.stub.CreateSandbox(self.pb.CreateSandboxRequest(
            hostname="kata-sb", storages=[shared_storage()], sandbox_id=self.sandbox.sandbox_id), timeout=30)

    def create(self, cid: str, args, *, terminal: bool = False) -> None:
        from tests.fixtures.oci import busybox_spec
        from tests.fixtures.rootfs import build_busybox_rootfs

        build_busybox_rootfs(Path(self.sandbox.shared_dir) / cid / "rootfs")
        self.stub.CreateContainer(self.pb.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=busybox_spec(cid, list(args), terminal=terminal)), timeout=30)

    def start(self, cid: str) -> None:
        self.stub.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=30)

    def run(self, cid: str, args, *, terminal: bool = False) -> None:
        self.create(cid, args, terminal=terminal)
        self.start(cid)

    def exec(self, cid: str, exec_id: str, args, *, terminal: bool = False) -> None:
        from tests.fixtures.oci import process

        self.stub.ExecProcess(self.pb.ExecProcessRequest(
            container_id=cid, exec_id=exec_id, process=process(list(args), terminal=terminal)), timeout=30)

    def signal(self, cid: str, exec_id: str, signum: int) -> None:
        self.stub.SignalProcess(self.pb.SignalProcessRequest(
            container_id=cid, exec_id=exec_id, signal=signum), timeout=30)

    def wait(self, cid: str, exec_id: str | None = None) -> int:
        """WaitProcess as another client (a runtime) would call it; returns the status."""
        return self.stub.WaitProcess(self.pb.WaitProcessRequest(
            container_id=cid, exec_id=exec_id or cid), timeout=60).status

    def shim_args(self, cid: str, exec_id: str | None = None, *extra: str, address: str | None = None):
        return [*shim_command(), "--agent", address or self.address, "--container", cid,
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
        self.channel.close()


class Kata1xPeer(Agent):
    """tests/peers/kata1x_agent.py as a subprocess, driven with the same calls as ``Agent``.

    Its processes run on the host (the OCI process args; no rootfs, no runc).  ``popen`` is
    the peer itself (a test may kill it).
    """

    name = "kata1x"

    def __init__(self, workdir: str):
        import os

        self.sandbox = self.proxy = None
        path = os.path.join(workdir, "kata1x.sock")
        peer = Path(__file__).resolve().parents[1] / "peers" / "kata1x_agent.py"
        self.popen = subprocess.Popen([sys.executable, str(peer), "--listen", path],
                                      stdout=subprocess.PIPE)
        if self.popen.stdout.readline() != b"READY\n":
            self.popen.kill()
            raise RuntimeError("the Kata 1.x peer did not start")
        self._connect(path)

    def create_sandbox(self) -> None:
        self.stub.CreateSandbox(self.pb.CreateSandboxRequest(hostname="kata-sb"), timeout=30)

    def create(self, cid: str, args, *, terminal: bool = False) -> None:
        from katapb import oci_pb2

        from tests.fixtures.oci import process

        self.stub.CreateContainer(self.pb.CreateContainerRequest(
            container_id=cid, exec_id=cid,
            OCI=oci_pb2.Spec(Process=process(list(args), terminal=terminal))), timeout=30)

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
