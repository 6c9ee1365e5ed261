"""Process helpers for the kata-proxy tests and bench: start the agent stand-in and the proxy as
real processes, wait for their ready lines, read the proxy's stats, stop only what we started."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "tests" / "peers" / "yamux_health_server.py"


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


def wait_for(predicate, timeout: float, what: str):
    """Call ``predicate()`` every 50 ms until it returns something true, and return that;
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_line(proc: subprocess.Popen, want: str, timeout: float) -> str:
    """Read proc.stdout until a line equal to ``want``; returns everything read.  Raises on
    timeout or exit."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        lines = buf.decode(errors="replace").splitlines()
        if want in lines:
            return buf.decode(errors="replace")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {want!r} line within {timeout}s; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                code = proc.wait(timeout=5)
                raise RuntimeError(f"process exited with {code} before {want!r}; got {buf!r}")
            buf += chunk


class Proc:
    def __init__(self, popen: subprocess.Popen, name: str):
        self.popen = popen
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; only this process, by its pid."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return self.popen.returncode


class PeerProc(Proc):
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
               timeout: float = 30.0) -> PeerProc:
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
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(
        os.path.join(directory, "peer.stderr"), "ab"), env=child_env(), cwd=str(REPO))
    peer = PeerProc(popen, listen, grpc_socket, events, pty_file)
    try:
        wait_line(popen, "READY", timeout)
    except BaseException:
        peer.stop()
        raise
    return peer


class ProxyProc(Proc):
    def __init__(self, popen, listen: str | None, log_path: str | None):
        super().__init__(popen, "proxy")
        self.listen = listen
        self.log_path = log_path

    def log_lines(self) -> list[str]:
        if not self.log_path:
            return []
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


def start_proxy(directory: str, *, mux: str | None = None, args: list[str] | None = None,
                listen: str | None = "default", log_level: str = "info", ready: bool = True,
                env: dict | None = None, timeout: float = 30.0) -> ProxyProc:
    if listen == "default":
        listen = os.path.join(directory, "proxy.sock")
    log_path = os.path.join(directory, "proxy.log")
    cmd = [sys.executable, "-m", "kata_proxy", "--log-level", log_level, "--log-file", log_path]
    if mux:
        cmd += ["--mux-socket", mux]
    if listen:
        cmd += ["--listen-socket", listen]
    cmd += args or []
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=child_env(env), cwd=str(REPO))
    proxy = ProxyProc(popen, listen, log_path)
    if ready:
        try:
            wait_line(popen, "READY=1", timeout)
        except BaseException:
            proxy.stop()
            raise
    return proxy
