"""Transport adapters: how a :class:`~yamux.session.Session` reads, writes
and closes its byte channel.

* :class:`_SessionProtocol` + :class:`_TransportIO`: an asyncio transport
  (a socket, or the two ends of a pipe pair for a character device such as
  a virtio-serial port); the protocol reads into the session's reusable
  buffer (``asyncio.BufferedProtocol``).
* :class:`_StreamPairIO`: a generic ``(StreamReader, StreamWriter)`` pair,
  read by a task.

Both end with the lingering close (see :meth:`_TransportIO.close`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

#: Transport write-buffer limits: above HIGH we stop adding Data frames.
_TRANSPORT_HIGH = 512 * 1024
_TRANSPORT_LOW = 128 * 1024
#: Read size of the generic StreamReader path.
_READ_SIZE = 256 * 1024


class _SessionProtocol(asyncio.BufferedProtocol):
    """Feeds a session from a transport (socket, or one end of a pipe pair).

    A buffered protocol: the transport reads straight into the session's
    reusable buffer (no bytes object, no copy per read).  Transports
    that only know ``data_received`` (asyncio's pipe transports) use that.
    """

    def __init__(self, session: Session, writable: bool = True) -> None:
        self._session = session
        self._writable = writable
        # bound once: no extra call per chunk
        self.get_buffer = session._get_buffer
        self.buffer_updated = session._on_buffer
        self.data_received = session._on_data

    def connection_made(self, transport) -> None:
        _set_send_buffer(transport, self._session._config.socket_send_buffer)
        self._session._io.attach(transport, self._writable)

    def get_buffer(self, sizehint: int):  # replaced per instance in __init__
        return self._session._get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:  # replaced per instance in __init__
        self._session._on_buffer(nbytes)

    def data_received(self, data) -> None:  # replaced per instance in __init__
        self._session._on_data(data)

    def eof_received(self):
        self._session._io.peer_eof = True
        self._session._on_eof()
        return False

    def connection_lost(self, exc) -> None:
        self._session._on_lost(exc)

    def pause_writing(self) -> None:
        self._session._paused = True

    def resume_writing(self) -> None:
        self._session._resume()


class _TransportIO:
    """Output and closing over one transport (socket) or two (read/write pipes)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._transports: list = []
        self._write_transport = None
        self._open = 0
        self._abort_handle = None
        self.peer_eof = False  # the peer shut its write side (EOF read)
        self.done = session._loop.create_future()

    def attach(self, transport, writable: bool) -> None:
        self._transports.append(transport)
        self._open += 1
        if writable:
            self._write_transport = transport
            try:
                transport.set_write_buffer_limits(high=_TRANSPORT_HIGH, low=_TRANSPORT_LOW)
            except (AttributeError, NotImplementedError):  # pragma: no cover
                pass
            self._session._write = transport.writelines

    def lost(self) -> None:
        self._open -= 1
        if self._open <= 0:
            if self._abort_handle is not None:
                self._abort_handle.cancel()
            if not self.done.done():
                self.done.set_result(None)

    def close(self, timeout: float, linger: bool = False) -> None:
        """Close the transport(s) once what is buffered is written, aborting
        after ``timeout`` seconds.

        ``linger`` (a clean local end, the peer has not shut its side yet):
        on a socket, shut our write side only (``shutdown(SHUT_WR)`` once the
        buffer is written) and go on reading, discarding, until the peer's
        EOF closes the transport.  A peer that is still writing (a window
        update for what it is still reading) then never finds our socket
        closed: hashicorp/yamux ends its session on a write error (EPIPE)
        without reading the frames still in its socket, so closing at once
        could lose the end of what we sent.  A character device or pipe
        (virtio-serial ports: no half-close) is closed at once, as without
        ``linger``.
        """
        if linger and not self.peer_eof and self._can_half_close():
            self._write_transport.write_eof()  # the peer's EOF then closes it (eof_received)
        else:
            for transport in self._transports:
                if not transport.is_closing():
                    transport.close()
        if self._open > 0 and self._abort_handle is None:
            self._abort_handle = self._session._loop.call_later(timeout, self._abort)

    def _can_half_close(self) -> bool:
        transport = self._write_transport
        return (
            len(self._transports) == 1
            and transport is not None
            and not transport.is_closing()
            and transport.get_extra_info("socket") is not None
            and transport.can_write_eof()
        )

    def _abort(self) -> None:
        for transport in self._transports:
            transport.abort()


class _StreamPairIO:
    """Output, input task and closing over an (asyncio.StreamReader, StreamWriter) pair."""

    def __init__(self, session: Session, reader, writer) -> None:
        self._session = session
        self._reader = reader
        self._writer = writer
        self._drain_task: asyncio.Task | None = None
        self._closing = False
        self.close_task: asyncio.Task | None = None
        self.peer_eof = False  # the peer shut its write side (EOF read)
        self.done = session._loop.create_future()
        session._write = self._write
        self._read_task = session._loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        session = self._session
        reader = self._reader
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                session._on_data(data)
                if session._closed:
                    return
        except asyncio.CancelledError:
            return
        except Exception as exc:  # transport failure
            session._on_lost(exc)
            return
        self.peer_eof = True
        session._on_eof()

    def _write(self, bufs) -> None:
        writer = self._writer
        writer.writelines(bufs)
        try:
            size = writer.transport.get_write_buffer_size()
        except Exception:
            size = _TRANSPORT_HIGH + 1  # unknown: wait for drain() each time
        if size > _TRANSPORT_HIGH and self._drain_task is None and not self._closing:
            self._session._paused = True
            self._drain_task = self._session._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._drain_task = None
            self._session._on_lost(exc)
            return
        self._drain_task = None
        self._session._resume()

    def close(self, timeout: float, linger: bool = False) -> None:
        """Close the writer (at most ``timeout`` seconds), lingering on a
        socket as :meth:`_TransportIO.close` does."""
        if self._closing:
            return
        self._closing = True
        self.close_task = self._session._loop.create_task(self._close(timeout, linger))

    async def _close(self, timeout: float, linger: bool) -> None:
        """Cancelling it aborts the transport and raises CancelledError."""
        loop = self._session._loop
        deadline = loop.time() + timeout
        current = asyncio.current_task()
        for task in (self._read_task, self._drain_task):
            if task is not None and task is not current and not task.done():
                task.cancel()
        writer = self._writer
        try:
            if linger and not self.peer_eof and writer.can_write_eof() and writer.get_extra_info("socket") is not None:
                await _wait_ended(self._read_task, current)  # it reads no more: we do
                try:
                    writer.write_eof()  # shutdown(SHUT_WR) once the buffer is written
                    await asyncio.wait_for(self._discard_until_eof(), timeout)
                except (OSError, asyncio.TimeoutError):
                    pass
            try:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), max(0.0, deadline - loop.time()))
            except Exception:  # (not a cancel) the transport failed or did not flush in time
                self._abort()
            for task in (self._read_task, self._drain_task):
                await _wait_ended(task, current)
        except asyncio.CancelledError:
            self._abort()
            raise
        finally:
            if not self.done.done():
                self.done.set_result(None)

    def _abort(self) -> None:
        transport = getattr(self._writer, "transport", None)
        if transport is not None:
            transport.abort()

    async def _discard_until_eof(self) -> None:
        """Read and drop what the peer still sends, until its EOF."""
        while await self._reader.read(_READ_SIZE):
            pass
        self.peer_eof = True


async def _wait_ended(task: asyncio.Task | None, current: asyncio.Task | None) -> None:
    """Wait until a task we cancelled (or that ended by itself) is done.  Its
    own outcome is not ours (it handles its errors); a cancel of the caller
    is raised here as usual."""
    if task is not None and task is not current and not task.done():
        await asyncio.wait([task])


# ---------------------------------------------------------------------------


def _set_send_buffer(transport, size: int) -> None:
    """SO_SNDBUF on a socket transport (pipes and serial ports have none)."""
    if not size:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:  # not a socket option this socket knows: leave it
        pass
