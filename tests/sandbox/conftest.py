"""Process-sandbox tier fixtures: a real kata-agent in a ProcessSandbox, the real kata-proxy
connected to its kata.sock, and a grpc.aio client on the proxy's listen socket.

Every process is one we started, stopped by pid at teardown. Logs (console.log, proxy.log) are
printed at teardown, so a failing test shows them.
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

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kata_runtime.hypervisor import ProcessSandbox  # noqa: E402

PROXY_READY_TIMEOUT = 30.0


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the process sandbox needs root (mount/pid namespaces, runc)"
    for tool in ("unshare", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = missing_requirements()
    for item in items:
        if Path(str(item.fspath)).parent == here and "sandbox" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def sandbox_dir():
    """A short directory (unix socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ksb", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dump(path: str, title: str) -> None:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return
    sys.stdout.write(f"\n----- {title} ({path}) -----\n{text[-20000:]}\n")


@pytest.fixture
async def sandbox(sandbox_dir):
    sb = ProcessSandbox(sandbox_dir, f"sb-{uuid.uuid4().hex[:12]}", log_level="debug")
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()
        dump(sb.console_log_path, "console.log")


class Proxy:
    def __init__(self, popen: subprocess.Popen, listen_socket: str, log_path: str):
        self.popen = popen
        self.listen_socket = listen_socket
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


def proxy_command() -> list[str]:
    exe = Path(sys.executable).with_name("kata-proxy")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "kata_proxy"]


async def start_proxy(sb: ProcessSandbox) -> Proxy:
    listen = os.path.join(sb.sandbox_dir, "proxy.sock")
    log_path = os.path.join(sb.sandbox_dir, "proxy.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [*proxy_command(), "--mux-socket", sb.channel_socket_path, "--listen-socket", listen,
             "--sandbox", sb.sandbox_id, "--log-level", "debug"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/",
        )
    proxy = Proxy(popen, listen, log_path)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(popen.stdout.readline), PROXY_READY_TIMEOUT)
    except BaseException:
        proxy.stop()
        raise
    if line.strip() != b"READY=1":
        proxy.stop()
        dump(log_path, "proxy.log")
        raise RuntimeError(f"kata-proxy did not get ready (status {popen.returncode}, stdout {line!r})")
    return proxy


@pytest.fixture
async def proxy(sandbox):
    p = await start_proxy(sandbox)
    try:
        yield p
    finally:
        p.stop()
        dump(p.log_path, "proxy.log")


class AgentClient:
    """grpc.aio stubs of AgentService and Health over one channel to the proxy."""

    def __init__(self, target: str):
        import grpc
        from katapb import agent_pb2_grpc, health_pb2_grpc

        self.channel = grpc.aio.insecure_channel(target)
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def client(proxy):
    c = AgentClient(f"unix:{proxy.listen_socket}")
    try:
        yield c
    finally:
        await c.close()
