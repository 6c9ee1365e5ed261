"""Process helpers of the process-sandbox and VM tests: the real kata-proxy as a child, a grpc.aio
client of AgentService/Health, log dumps. Only processes started here are signalled (by pid)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROXY_READY_TIMEOUT = 30.0


def dump(path: str, title: str) -> None:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return
    sys.stdout.write(f"\n----- {title} ({path}) -----\n{text[-20000:]}\n")


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


async def start_proxy(mux_socket: str, workdir: str, *, name: str = "proxy", sandbox_id: str = "sandbox",
                      timeout: float = PROXY_READY_TIMEOUT, extra_args=()) -> Proxy:
    """kata-proxy --mux-socket MUX --listen-socket WORKDIR/NAME.sock; returns once it printed READY=1."""
    listen = os.path.join(workdir, f"{name}.sock")
    log_path = os.path.join(workdir, f"{name}.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [*proxy_command(), "--mux-socket", mux_socket, "--listen-socket", listen,
             "--sandbox", sandbox_id, "--log-level", "debug", *extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/",
        )
    proxy = Proxy(popen, listen, log_path)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(popen.stdout.readline), timeout)
    except BaseException:
        proxy.stop()
        raise
    if line.strip() != b"READY=1":
        proxy.stop()
        dump(log_path, "proxy.log")
        raise RuntimeError(f"kata-proxy did not get ready (status {popen.returncode}, stdout {line!r})")
    return proxy


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
