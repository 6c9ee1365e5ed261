"""The one kata-proxy launcher of the tests and benchmarks, and the yamux agent stand-in.

    peer = start_peer(directory)                        # tests/peers/yamux_health_server.py
    for block in pattern(n): ...                        # the bulk data it sends and checks
    proxy = start_proxy(directory, mux=peer.listen)     # kata-proxy, returns once it printed READY=1
    proxy.listen; proxy.stats(); proxy.memory_kb(); proxy.stop()

    # beside a sandbox (asyncio: keep the loop free while the proxy gets ready)
    proxy = await asyncio.to_thread(start_proxy, sandbox.sandbox_dir, mux=sandbox.channel_socket_path,
                                    sandbox_id=sandbox.sandbox_id, log_level="debug")

kata-proxy is run as the runtime runs it (the venv's script, else ``python -m kata_proxy``), its
log in ``<directory>/<name>.log`` (``--log-file``) and its stderr in ``<name>.stderr``; READY=1
is read from its stdout (kata-proxy without NOTIFY_SOCKET). Only processes started here are
stopped, by pid.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

from tests.support.processes import REPO, Proc, child_env, command, dump, wait_line

PEER = REPO / "tests" / "peers" / "yamux_health_server.py"
READY_TIMEOUT = 30.0
BLOCK = 1 << 20


def pattern_block(index: int, size: int = BLOCK) -> bytes:
    """Block ``index`` of the deterministic bulk pattern (not periodic across blocks): what the
    stand-in sends for ``G`` and what its clients send and check."""
    seed = hashlib.sha256(b"kata-proxy-pattern:%d" % index).digest()
    return (seed * (size // len(seed) + 1))[:size]


def pattern(total: int):
    """Yield the pattern's blocks up to ``total`` bytes."""
    index = 0
    sent = 0
    while sent < total:
        block = pattern_block(index)
        if total - sent < len(block):
            block = block[: total - sent]
        sent += len(block)
        index += 1
        yield block


class PeerProc(Proc):
    """tests/peers/yamux_health_server.py: a yamux server on a QEMU-shaped socket (see there)."""

    def __init__(self, popen, listen: str, grpc_socket: str, events: str, pty_file: str | None):
        super().__init__(popen, "peer")
        self.listen = listen
        self.grpc_socket = grpc_socket
        self.events_path = events
        self.pty_file = pty_file

    def events(self) -> list[str]:
        try:
            with open(self.events_path) as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []

    def pty_path(self) -> str:
        with open(self.pty_file) as fh:
            return fh.read().strip()


def start_peer(directory: str, *, mode: str = "agent", uvloop: bool = False, pty: bool = False,
               timeout: float = READY_TIMEOUT) -> PeerProc:
    listen = os.path.join(directory, "kata.sock")
    grpc_socket = os.path.join(directory, "grpc.sock")
    events = os.path.join(directory, "peer.events")
    pty_file = os.path.join(directory, "pty.path") if pty else None
    cmd = [sys.executable, str(PEER), "--listen", listen, "--mode", mode,
           "--grpc-socket", grpc_socket, "--events", events]
    if uvloop:
        cmd.append("--uvloop")
    if pty:
        cmd += ["--pty", pty_file]
    with open(os.path.join(directory, "peer.stderr"), "ab") as err:
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=child_env(), cwd=str(REPO))
    peer = PeerProc(popen, listen, grpc_socket, events, pty_file)
    try:
        wait_line(popen, "READY", timeout)
    except BaseException:
        peer.stop()
        raise
    return peer


class ProxyProc(Proc):
    """A kata-proxy we started."""

    def __init__(self, popen, listen: str | None, log_path: str):
        super().__init__(popen, "proxy")
        self.listen = listen
        self.log_path = log_path

    @property
    def listen_socket(self) -> str | None:
        return self.listen

    def log_lines(self) -> list[str]:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def memory_kb(self) -> dict:
        """rss, pss and uss (private clean + dirty) in KiB, from /proc/PID/smaps_rollup."""
        values = {}
        with open(f"/proc/{self.pid}/smaps_rollup") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    values[parts[0].rstrip(":")] = int(parts[1])
        return {"rss": values.get("Rss", -1), "pss": values.get("Pss", -1),
                "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}

    def stats(self, timeout: float = 10.0) -> dict:
        """SIGUSR1, then the new ``msg=stats`` line of the log, parsed."""
        from kata_log import parse_logfmt

        before = sum(1 for line in self.log_lines() if "msg=stats" in line)
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.log_lines() if "msg=stats" in line]
            if len(lines) > before:
                return {k: (int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v)
                        for k, v in parse_logfmt(lines[-1]).items()}
            time.sleep(0.02)
        raise TimeoutError("no stats line from the proxy")


def start_proxy(directory: str, *, mux: str | None = None, listen: str | None = "default", name: str = "proxy",
                sandbox_id: str | None = None, log_level: str = "info", args=(), ready: bool = True,
                env: dict | None = None, timeout: float = READY_TIMEOUT) -> ProxyProc:
    """kata-proxy [--mux-socket MUX] [--listen-socket DIR/NAME.sock] [--sandbox ID] ARGS.

    ``listen=None``: no --listen-socket (``args`` give it, or systemd does); ``ready``: wait for
    its READY=1 line (on failure it is stopped and its log printed); ``env``: added to the child
    environment (child_env)."""
    if listen == "default":
        listen = os.path.join(directory, f"{name}.sock")
    log_path = os.path.join(directory, f"{name}.log")
    cmd = [*command("kata-proxy"), "--log-level", log_level, "--log-file", log_path]
    if mux:
        cmd += ["--mux-socket", mux]
    if listen:
        cmd += ["--listen-socket", listen]
    if sandbox_id:
        cmd += ["--sandbox", sandbox_id]
    cmd += list(args)
    with open(os.path.join(directory, f"{name}.stderr"), "ab") as err:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                 env=child_env(env), cwd=str(REPO))
    proxy = ProxyProc(popen, listen, log_path)
    if ready:
        try:
            wait_line(popen, "READY=1", timeout)
        except BaseException:
            proxy.stop()
            dump(log_path, f"{name}.log")
            raise
    return proxy
