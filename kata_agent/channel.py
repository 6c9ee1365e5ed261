"""The agent's channel: the one byte stream between the host and kata-agent.

Three shapes, one interface (`Channel.connect()` hands back the transport of
one host connection, `Channel.reusable` says whether to wait for another one
after it ends):

* **VM** — the virtio-serial port QEMU exposes with ``name=agent.channel.0``.
  Without udev there is no ``/dev/virtio-ports/`` symlink, so the port is found
  by reading ``/sys/class/virtio-ports/vport*/name`` and opening
  ``/dev/vportNpM`` (``O_RDWR|O_NONBLOCK``). The port may appear a little
  after the agent starts, so discovery retries for a while. The guest end of a
  port exists whether or not anything is connected to QEMU's host end
  (``-chardev socket,server=on,wait=off``): while nobody is, ``poll`` reports
  ``POLLHUP`` and reads return 0, so `VirtioPortChannel` waits until the port
  becomes writable (= the host side is connected) before a yamux session is
  started on it, and waits again after the proxy goes away (reusable).

* **Process sandbox** — ``--channel-fd N``: an inherited file descriptor.
  The driver (kata_runtime.hypervisor.process) binds and listens on
  ``<sandbox>/kata.sock`` *before* it starts the agent and passes the
  LISTENING socket; the agent accepts exactly one connection, the proxy's.
  To the proxy this is exactly QEMU's ``-chardev socket,server=on,wait=off``:
  the path exists as soon as the "hypervisor" is started, a connect succeeds
  at once (the kernel backlog holds it until the agent is up), and the bytes
  go to the one agent. A connected stream socket (a socketpair end) or a
  character device are accepted as ``N`` as well.

* ``--channel-socket PATH``: the agent listens on PATH itself (development:
  nothing has to pre-create the socket) and accepts one connection.

Socket channels are not reusable: when the host end hangs up the agent is
done, like a VM whose serial cable was cut. Only ``connect()`` waits; nothing
here imports grpc or yamux, so discovery is cheap on the agent's start path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import stat

log = logging.getLogger("kata_agent.channel")

VIRTIO_PORT_NAME = "agent.channel.0"
# Like the Kata 1.x agent: 200 tries 50 ms apart, 10 s in all.
PORT_WAIT_TIMEOUT = 10.0
PORT_WAIT_INTERVAL = 0.05


class ChannelError(Exception):
    """The channel cannot be found or opened; the message says what to fix."""


class Transport:
    """One host connection: a connected stream socket or a character-device fd.

    Exactly one of `sock` and `fd` is set. The yamux session built on it owns
    it from then on; `close()` is idempotent and only for paths where no
    session was created.
    """

    def __init__(self, *, sock: socket.socket | None = None, fd: int | None = None, description: str):
        if (sock is None) == (fd is None):
            raise ValueError("exactly one of sock and fd")
        self.sock = sock
        self.fd = fd
        self.description = description

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class Channel:
    """Where host connections come from."""

    #: After a connection ends, can `connect()` be called again for the next one?
    reusable = False
    description = "channel"

    async def connect(self) -> Transport:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the channel holds (listening socket, path)."""


# --------------------------------------------------------------------- virtio


def find_virtio_port(name: str = VIRTIO_PORT_NAME, *, sysfs_root: str = "/sys", dev_root: str = "/dev") -> str | None:
    """The /dev path of the virtio-serial port called `name`, or None.

    Reads ``<sysfs_root>/class/virtio-ports/*/name``; the name must match
    exactly (``agent.channel.01`` is not ``agent.channel.0``).
    """
    base = os.path.join(sysfs_root, "class", "virtio-ports")
    try:
        ports = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for port in ports:
        try:
            with open(os.path.join(base, port, "name"), "rb") as f:
                content = f.read()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if content.strip().decode("utf-8", "replace") == name:
            return os.path.join(dev_root, port)
    return None


async def wait_virtio_port(
    name: str = VIRTIO_PORT_NAME,
    *,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    timeout: float = PORT_WAIT_TIMEOUT,
    interval: float = PORT_WAIT_INTERVAL,
) -> str:
    """Wait until the port is listed in sysfs AND its device node exists."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        path = find_virtio_port(name, sysfs_root=sysfs_root, dev_root=dev_root)
        if path is not None and os.path.exists(path):
            return path
        if loop.time() >= deadline:
            where = os.path.join(sysfs_root, "class", "virtio-ports")
            if path is None:
                raise ChannelError(
                    f"no virtio-serial port named {name!r} under {where} after {timeout:g}s: "
                    "is the VM started with -device virtserialport,name=agent.channel.0 "
                    "and virtio_console loaded?"
                )
            raise ChannelError(f"virtio port {name!r} is listed in {where} but {path} does not exist (devtmpfs on /dev?)")
        await asyncio.sleep(interval)


HOST_RECHECK_INTERVAL = 0.5


def host_connected(fd: int) -> bool:
    """Level check: writable and no hang-up = something is connected on the host side."""
    p = select.poll()
    p.register(fd, select.POLLOUT)
    events = 0
    for _fd, ev in p.poll(0):
        events |= ev
    if events & (select.POLLERR | select.POLLNVAL):
        raise ChannelError("channel device I/O error while waiting for the host side")
    return bool(events & select.POLLOUT) and not events & select.POLLHUP


async def wait_host_connected(fd: int, *, recheck: float = HOST_RECHECK_INTERVAL) -> None:
    """Wait until the host end of a virtio port is connected.

    A virtio port reports POLLHUP, and never POLLOUT, while nothing is connected
    to the host side (QEMU's chardev socket has no client); when the proxy
    connects, the kernel sets host_connected and wakes the port's wait queue,
    so POLLOUT appears. POLLHUP is level-triggered, hence an edge-triggered
    epoll (as the Kata 1.x agent did) watched through the event loop rather
    than spinning on poll(); a slow level re-check every `recheck` seconds
    covers devices that change state without a wake-up (a pty, in tests).
    """
    if host_connected(fd):
        return
    loop = asyncio.get_running_loop()
    ep = select.epoll(1)
    try:
        ep.register(fd, select.EPOLLOUT | select.EPOLLET)
        log.info("channel: waiting for the host side to connect")
        while not host_connected(fd):
            ready = loop.create_future()
            loop.add_reader(ep.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await asyncio.wait_for(ready, recheck)
            except asyncio.TimeoutError:
                pass
            finally:
                loop.remove_reader(ep.fileno())
            ep.poll(0)  # consume the edge
    finally:
        ep.close()


async def _device_transport(fd: int, description: str) -> Transport:
    """The transport of a character device once its host side is connected; `fd` is
    closed if that wait fails or is cancelled."""
    try:
        await wait_host_connected(fd)
    except BaseException:
        os.close(fd)
        raise
    return Transport(fd=fd, description=description)


class VirtioPortChannel(Channel):
    """The VM's channel: a virtio-serial port; one yamux session per host connection."""

    reusable = True

    def __init__(self, path: str | None = None, *, name: str = VIRTIO_PORT_NAME, sysfs_root: str = "/sys", dev_root: str = "/dev"):
        self.path = path
        self.name = name
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.description = f"virtio port {name}"

    async def connect(self) -> Transport:
        if self.path is None:
            self.path = await wait_virtio_port(self.name, sysfs_root=self.sysfs_root, dev_root=self.dev_root)
            self.description = f"virtio port {self.name} ({self.path})"
            log.info("channel: found %s", self.description)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise ChannelError(f"cannot open {self.path}: {exc.strerror}") from exc
        return await _device_transport(fd, self.description)


# -------------------------------------------------------------------- sockets


class ConnectedSocketChannel(Channel):
    """An already connected stream socket (e.g. one end of a socketpair)."""

    def __init__(self, sock: socket.socket, description: str):
        self._sock: socket.socket | None = sock
        self.description = description

    async def connect(self) -> Transport:
        if self._sock is None:
            raise ChannelError(f"{self.description}: already used")
        sock, self._sock = self._sock, None
        sock.setblocking(False)
        return Transport(sock=sock, description=self.description)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class ListeningSocketChannel(Channel):
    """A listening unix socket: accept ONE connection, as QEMU's chardev server.

    The listener is closed once the connection is accepted: a second client
    gets ECONNREFUSED at once instead of hanging in the backlog. If `path` is
    set, the agent created the socket and removes it again.
    """

    def __init__(self, listener: socket.socket, description: str, *, path: str | None = None):
        self._listener: socket.socket | None = listener
        self.description = description
        self._path = path

    async def connect(self) -> Transport:
        if self._listener is None:
            raise ChannelError(f"{self.description}: already used")
        listener = self._listener
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        log.debug("channel: waiting for the host to connect to %s", self.description)
        sock, _ = await loop.sock_accept(listener)
        self.close()
        sock.setblocking(False)
        return Transport(sock=sock, description=self.description)

    def close(self) -> None:
        if self._listener is not None:
            # shutdown, not just close: another process may hold a copy of the
            # listening fd (the sandbox's unshare does), and the socket must
            # refuse connections all the same.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None


class DeviceFdChannel(Channel):
    """An inherited character device fd (a serial port handed over by a wrapper)."""

    def __init__(self, fd: int, description: str):
        self._fd: int | None = fd
        self.description = description

    async def connect(self) -> Transport:
        if self._fd is None:
            raise ChannelError(f"{self.description}: already used")
        fd, self._fd = self._fd, None
        os.set_blocking(fd, False)
        return await _device_transport(fd, self.description)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


# ------------------------------------------------------------------- builders


def channel_from_fd(fd: int) -> Channel:
    """An inherited fd: a listening socket, a connected socket or a char device."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ChannelError(f"--channel-fd {fd}: not an open file descriptor ({exc.strerror})") from exc
    os.set_inheritable(fd, False)
    if stat.S_ISSOCK(st.st_mode):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ChannelError(f"--channel-fd {fd}: socket is not SOCK_STREAM")
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        if listening:
            name = _sockname(sock)
            return ListeningSocketChannel(sock, f"listening socket fd {fd}{name}")
        return ConnectedSocketChannel(sock, f"connected socket fd {fd}")
    if stat.S_ISCHR(st.st_mode):
        return DeviceFdChannel(fd, f"character device fd {fd}")
    raise ChannelError(f"--channel-fd {fd}: neither a socket nor a character device")


def channel_from_path(path: str) -> Channel:
    """``--channel-socket PATH``: listen on PATH and accept one connection.

    A stale socket file left behind by a dead agent is replaced; anything else
    at PATH is an error.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ChannelError(f"--channel-socket {path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale
        else:
            raise ChannelError(f"--channel-socket {path}: something is already listening there")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
    except OSError as exc:
        listener.close()
        hint = " (unix socket paths are limited to 107 bytes)" if exc.errno in (errno.EINVAL, errno.ENAMETOOLONG) else ""
        raise ChannelError(f"--channel-socket {path}: cannot listen: {exc.strerror}{hint}") from exc
    return ListeningSocketChannel(listener, f"unix socket {path}", path=path)


def open_channel(
    *,
    fd: int | None = None,
    socket_path: str | None = None,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
) -> Channel:
    """The agent's channel from its command line; the virtio port when neither is given."""
    if fd is not None and socket_path is not None:
        raise ChannelError("give at most one of --channel-fd and --channel-socket")
    if fd is not None:
        return channel_from_fd(fd)
    if socket_path is not None:
        return channel_from_path(socket_path)
    return VirtioPortChannel(sysfs_root=sysfs_root, dev_root=dev_root)


def _sockname(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return f" ({name})" if name else ""
