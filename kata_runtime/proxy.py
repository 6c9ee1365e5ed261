"""kata-proxy, one per sandbox: spawned detached by ``create``, stopped by ``delete``.

Started as ``kata-proxy --mux-socket <vm>/kata.sock --listen-socket <vm>/proxy.sock
--sandbox ID --log-file <vm>/proxy.log`` in its own session (it outlives the short-lived
runtime). Readiness is kata-proxy's sd_notify ``READY=1``: the runtime hands it a
NOTIFY_SOCKET (an abstract datagram socket of its own), so the proxy keeps no pipe to the
runtime and nothing of the caller's stdio. It is ready once its listen socket exists and
its yamux session to the agent is up. Later commands find it by its record
(kata_runtime.procs: pid + start time).
"""

from __future__ import annotations

import os
import time

from kata_runtime import procs
from kata_runtime.errors import KataError

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class ProxyError(KataError):
    """kata-proxy did not start; the message has its exit status and last log lines."""


def command(settings: dict) -> list[str]:
    """kata-proxy's argv prefix from [proxy.kata] (``path``)."""
    return procs.component_command(settings.get("path", ""), "kata-proxy", "kata_proxy")


class Starting:
    """A kata-proxy spawned and not known ready yet: ``wait_ready()``, or ``stop()``.

    Spawning does not wait for the guest: kata-proxy retries its --mux-socket until the
    guest side listens, so the runtime starts it while the hypervisor boots."""

    def __init__(self, settings: dict, sandbox_id: str, mux_socket: str, listen_socket: str, log_path: str,
                 agent_logs_socket: str | None = None):
        """``agent_logs_socket``: the guest console socket (QEMU's), logged with source=agent."""
        import subprocess  # here: commands that only find the proxy by its record never need it

        self.log_path = log_path
        argv = [*command(settings), "--mux-socket", mux_socket, "--listen-socket", listen_socket,
                "--sandbox", sandbox_id, "--log-file", log_path,
                "--log-level", "debug" if settings.get("debug") else "info"]
        if agent_logs_socket:
            argv += ["--agent-logs-socket", agent_logs_socket]
        import socket  # here: a create that takes a cached sandbox imports this module, spawns nothing

        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"kata-runtime-notify-{os.getpid()}-{os.urandom(6).hex()}"
        self.notify.bind("\0" + name)
        try:
            with open(log_path, "ab") as log:
                self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=log, env=_environ("@" + name), cwd="/",
                                              start_new_session=True)
        except OSError as e:
            self.notify.close()
            raise ProxyError(f"cannot run {argv[0]}: {e.strerror}") from None
        procs.keep_priority(self.child.pid)
        try:
            self.record = procs.record(self.child.pid)
        except ProcessLookupError:
            self.record = {"pid": self.child.pid, "start": -1}

    def wait_ready(self, timeout: float = READY_TIMEOUT, abort=None) -> dict:
        """Wait for READY=1; returns the process record. ``abort``: a threading.Event that
        gives up early. Raises ProxyError (after killing the proxy) on exit, timeout or abort."""
        try:
            _wait_ready(self.child, self.notify, timeout, self.log_path, abort)
        except BaseException:
            self.stop()
            raise
        finally:
            self.notify.close()
        self.child.returncode = 0  # detached: the caller's subreaper reaps it once we have exited
        return self.record

    def stop(self) -> None:
        """Kill it if it still runs (clean-up of a failed start)."""
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        self.notify.close()


def start(settings: dict, sandbox_id: str, mux_socket: str, listen_socket: str, log_path: str,
          timeout: float = READY_TIMEOUT) -> dict:
    """Spawn kata-proxy and wait for READY=1; returns its process record. Raises ProxyError
    (after killing it) when it exits or is not ready within ``timeout`` seconds."""
    return Starting(settings, sandbox_id, mux_socket, listen_socket, log_path).wait_ready(timeout)


def stop(rec: dict | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, SIGKILL (procs.terminate: only the recorded
    process, through a pidfd, woken by its exit). Raises ProxyError if it survives."""
    if not procs.terminate(rec, timeout):
        raise ProxyError(f"kata-proxy pid {rec['pid']} survived SIGKILL")


def _environ(notify_address: str) -> dict:
    env = dict(os.environ)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    env["NOTIFY_SOCKET"] = notify_address
    return env


def _wait_ready(child, notify, timeout: float, log_path: str, abort=None) -> None:
    """Until READY=1 arrives on ``notify`` (a datagram socket); ProxyError when ``child`` (its subprocess.Popen) exits,
    ``timeout`` passes or ``abort`` (a threading.Event, looked at every 50 ms) is set. Woken by
    the datagram or the child's exit (a pidfd; every 50 ms where there is none), not a poll."""
    import select

    exited = procs.pidfd(child.pid)
    tick = 0.05 if abort is not None or exited is None else None
    deadline = time.monotonic() + timeout
    try:
        while True:
            if abort is not None and abort.is_set():
                raise ProxyError("kata-proxy start abandoned (the sandbox did not start)")
            left = deadline - time.monotonic()
            ready = select.select([notify] + ([exited] if exited is not None else []), [], [],
                                  max(0.0, min(left, tick) if tick else left))[0]
            if notify in ready and b"READY=1" in notify.recv(4096).split(b"\n"):
                return
            status = child.poll()
            if status is not None:
                raise ProxyError(f"kata-proxy exited with status {status} before it was ready: {log_tail(log_path)}")
            if left <= 0:
                raise ProxyError(f"kata-proxy not ready after {timeout:g}s: {log_tail(log_path)}")
    finally:
        if exited is not None:
            os.close(exited)


def log_tail(path: str, lines: int = 3) -> str:
    """The last ``lines`` lines of a log file, joined with " | " (for error messages)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(tail[-lines:]) or "no log"
