"""The guest channel of kata-proxy, and the yamux CLIENT session over it.

Two kinds of channel:

- ``--mux-socket PATH``: the unix socket QEMU binds a virtio-serial port to
  (``-chardev socket,server=on,wait=off``).  The VM may not be up yet, so connecting is retried
  (missing path, connection refused) with a growing pause until ``timeout`` seconds have passed.
  Permanent errors (permission denied, not a socket, not a directory) fail at once.
- ``--channel PATH``: a serial or character device.  A tty is opened with pyserial-asyncio (raw
  mode); anything else is opened as a plain non-blocking fd.  A missing device is waited for
  like a missing mux socket.  If the path turns out to be a unix socket it is connected to.

Both give a yamux Session with ``client=True`` (the agent is the server).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import stat
import time

from kata_proxy import exits

log = logging.getLogger("kata_proxy.channel")

_RETRY_ERRNOS = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN}


class ChannelError(exits.ProxyExit):
    def __init__(self, message: str):
        super().__init__(exits.CHANNEL_OPEN, message)


def _pause(attempt: int) -> float:
    return min(0.02 * (2 ** min(attempt, 5)), 0.5)


async def connect_unix_retry(path: str, timeout: float, what: str = "mux socket") -> socket.socket:
    """A connected non-blocking AF_UNIX socket to ``path``, retrying until ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + max(timeout, 0.0)
    attempt = 0
    last = None
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            if attempt:
                log.debug("%s connected after %d attempts", what, attempt + 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno not in _RETRY_ERRNOS:
                raise ChannelError(f"{what} {path}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        if time.monotonic() >= deadline:
            reason = last.strerror if last is not None and last.strerror else str(last)
            raise ChannelError(f"{what} {path}: {reason} (gave up after {timeout:g}s)")
        if attempt == 0:
            log.info("waiting for the %s %s (%s)", what, path, last.strerror if last else "")
        attempt += 1
        await asyncio.sleep(min(_pause(attempt), max(deadline - time.monotonic(), 0.0)))


async def _wait_for_path(path: str, timeout: float) -> os.stat_result:
    deadline = time.monotonic() + max(timeout, 0.0)
    attempt = 0
    while True:
        try:
            return os.stat(path)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise ChannelError(f"channel {path}: no such file or directory "
                                   f"(gave up after {timeout:g}s)") from None
        except OSError as exc:
            raise ChannelError(f"channel {path}: {exc.strerror or exc}") from None
        attempt += 1
        await asyncio.sleep(_pause(attempt))


def _pollable(fd: int) -> bool:
    """Whether epoll accepts ``fd`` (regular files and /dev/null do not; libuv would abort)."""
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
        return True
    except OSError:
        return False
    finally:
        ep.close()


async def open_mux_socket(path: str, timeout: float, config):
    from yamux import Session

    sock = await connect_unix_retry(path, timeout)
    try:
        return await Session.from_socket(sock, client=True, config=config)
    except BaseException:
        sock.close()
        raise


async def open_device(path: str, timeout: float, config, baudrate: int = 115200):
    from yamux import Session

    st = await _wait_for_path(path, timeout)
    if stat.S_ISSOCK(st.st_mode):
        sock = await connect_unix_retry(path, timeout, what="channel")
        try:
            return await Session.from_socket(sock, client=True, config=config)
        except BaseException:
            sock.close()
            raise
    if stat.S_ISDIR(st.st_mode):
        raise ChannelError(f"channel {path}: is a directory")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ChannelError(f"channel {path}: {exc.strerror or exc}") from None
    if not _pollable(fd):
        os.close(fd)
        raise ChannelError(f"channel {path}: device does not support poll/epoll; not a usable channel")
    if os.isatty(fd):
        os.close(fd)
        try:
            import serial_asyncio
        except ImportError:  # pragma: no cover - a declared dependency
            raise ChannelError(f"channel {path}: is a tty and pyserial-asyncio is not installed") from None
        try:
            reader, writer = await serial_asyncio.open_serial_connection(
                url=path, baudrate=baudrate, exclusive=True)
        except Exception as exc:  # serial.SerialException and OSError
            raise ChannelError(f"channel {path}: {exc}") from None
        log.debug("channel %s opened as a tty with pyserial-asyncio", path)
        return Session(reader, writer, client=True, config=config)
    log.debug("channel %s opened as a plain fd", path)
    try:
        return await Session.from_fd(fd, client=True, config=config)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
