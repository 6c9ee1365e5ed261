"""The shape every hypervisor driver has (process sandbox now, QEMU later).

A driver owns one sandbox's "guest": it starts it, knows where the guest's
agent channel and shared directory are on the host, and stops it leaving
nothing behind. Files of a sandbox live in its directory:

    <sandbox>/kata.sock      agent channel: a unix socket the guest side LISTENS
                             on, exactly like QEMU's `-chardev socket,server=on,
                             wait=off` virtio-serial port; kata-proxy connects to
                             it (--mux-socket) as the yamux client
    <sandbox>/shared/        shared with the guest (QEMU: virtio-9p "kataShared");
                             container rootfs go to shared/<container id>/rootfs
    <sandbox>/console.log    the guest console (kernel + agent log lines)
    <sandbox>/<kind>.pid     pid of the driver's process, so that another
                             (short-lived) kata-runtime process can stop it

The runtime is one short-lived process per command: `start()` returns with the
guest running in the background (daemonised, like `qemu -daemonize`), and a
new driver object for the same directory can `stop()` it later.
"""

from __future__ import annotations

import abc
import os
import time

from kata_runtime.procs import pid_alive


class HypervisorError(Exception):
    """The guest cannot be started or stopped; the message says why."""


class Hypervisor(abc.ABC):
    #: Driver name as in the runtime configuration (`hypervisor = "process"`).
    kind: str = ""

    CHANNEL_SOCKET = "kata.sock"
    SHARED_DIR = "shared"
    CONSOLE_LOG = "console.log"

    def __init__(self, sandbox_dir: str | os.PathLike, sandbox_id: str):
        if not sandbox_id:
            raise ValueError("sandbox_id must not be empty")
        self.sandbox_dir = os.path.abspath(os.fspath(sandbox_dir))
        self.sandbox_id = sandbox_id

    @classmethod
    def from_config(cls, sandbox_dir: str | os.PathLike, sandbox_id: str, settings: dict,
                    debug: bool = False) -> "Hypervisor":
        """A driver for one sandbox from its configuration section (``[hypervisor.<kind>]``,
        a dict of kata_runtime.config.SCHEMA's keys). ``debug``: the agent logs at debug level.
        The same settings must rebuild an equivalent object later (another runtime
        process stops the guest with it)."""
        return cls(sandbox_dir, sandbox_id)

    # -------------------------------------------------------------- layout
    @property
    def channel_socket_path(self) -> str:
        """Unix socket kata-proxy connects to (its --mux-socket)."""
        return os.path.join(self.sandbox_dir, self.CHANNEL_SOCKET)

    @property
    def shared_dir(self) -> str:
        """Host directory the guest sees as the 9p share `kataShared`."""
        return os.path.join(self.sandbox_dir, self.SHARED_DIR)

    @property
    def console_log_path(self) -> str:
        return os.path.join(self.sandbox_dir, self.CONSOLE_LOG)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.sandbox_dir, f"{self.kind}.pid")

    # ----------------------------------------------------------- lifecycle
    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """Host pid of the running guest process (QEMU, or the sandbox's unshare), else None."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the guest. On return `channel_socket_path` accepts connections."""

    async def wait_ready(self, probe, timeout: float | None = None) -> float:
        """Called once kata-proxy is up: wait until ``probe()`` (an async callable that returns
        once the agent answers through the proxy) returns, watching the guest meanwhile;
        returns the seconds waited. A guest that boots (QEMU) overrides this; by default the
        guest was ready when `start()` returned, and the probe is not even called."""
        return 0.0

    @abc.abstractmethod
    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the guest: ask nicely, wait up to `timeout`, then kill.

        Idempotent. On return no process of the guest is left and the channel
        socket and pid file are gone (the console log stays, for post-mortems).
        """

    def is_running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sandbox_id} pid={self.pid} dir={self.sandbox_dir}>"


# ------------------------------------------------------------ for the drivers


async def poll_until(done, timeout: float, interval: float) -> bool:
    """Call ``done()`` every ``interval`` seconds until it is true (True) or ``timeout`` passes (False)."""
    import asyncio  # not at import: commands that only read the configuration never need it

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def wait_gone(pid: int, timeout: float, interval: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to be gone (a zombie counts as gone); True if it is."""
    return await poll_until(lambda: not pid_alive(pid), timeout, interval)
