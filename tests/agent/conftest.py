"""Agent service tier: kata_agent's gRPC service run alone (python -m
kata_agent.standalone, real runc, real processes) on a temp unix socket, and a
grpc.aio client.

The server is a separate process (it becomes a child subreaper and owns
waitpid(-1); pytest must not). runc's --root and every bundle live in a temp
dir; at teardown every container is removed through the agent, then anything
left in that runc root is deleted with runc itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures.rootfs import build_busybox_rootfs, find_busybox  # noqa: E402

READY_TIMEOUT = 30


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "runc containers need root"
    if shutil.which("runc") is None:
        return "runc not installed"
    if find_busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = missing_requirements()
    if not reason:
        return
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.skip(reason=reason))


class AgentServer:
    """A standalone agent service process on a temp unix socket."""

    def __init__(self, *, buffer_limit: int | None = None, loop: str = "uvloop") -> None:
        self.dir = tempfile.mkdtemp(prefix="kag", dir="/tmp")
        self.socket = os.path.join(self.dir, "agent.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.shared = os.path.join(self.dir, "shared")
        self.runc_root = os.path.join(self.state_dir, "runc")
        os.makedirs(self.shared)
        self.template = os.path.join(self.dir, "rootfs-template")
        build_busybox_rootfs(self.template)
        self.log_path = os.path.join(self.dir, "agent.log")
        argv = [sys.executable, "-m", "kata_agent.standalone", "--socket", self.socket,
                "--state-dir", self.state_dir, "--shared-mount", self.shared,
                "--log-level", "info", "--loop", loop,
                "--cgroup-parent", f"kata-test-{uuid.uuid4().hex[:8]}"]
        if buffer_limit:
            argv += ["--buffer-limit", str(buffer_limit)]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("agent did not start:\n" + Path(self.log_path).read_text())

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
        self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def agent_server():
    """One agent for the whole session, with its sandbox created."""
    import grpc

    from katapb import agent_pb2, agent_pb2_grpc

    server = AgentServer()
    try:
        with grpc.insecure_channel("unix:" + server.socket) as ch:
            agent_pb2_grpc.AgentServiceStub(ch).CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="kata-test", sandbox_id="sb"), timeout=10)
        yield server
    finally:
        server.stop()
        left = server.leftover_containers()
        if os.environ.get("KATA_TEST_KEEP_LOGS"):
            print(Path(server.log_path).read_text())
        server.cleanup()
        assert not left, f"containers left behind: {left}"


@pytest.fixture
async def agent(agent_server):
    from tests.agent.client import AgentClient

    client = AgentClient(agent_server)
    try:
        yield client
    finally:
        await client.close()
