"""asyncio layer: :class:`Session`, :class:`Stream` and :func:`splice`.

The session drives a sans-IO :class:`~yamux.core.Connection`.  Bytes come in
through an ``asyncio.Protocol`` (``data_received``) on the fast paths
(:meth:`Session.connect_unix`, :meth:`Session.from_socket`,
:meth:`Session.from_fd`), or from a reader task for a generic
``(StreamReader, StreamWriter)`` pair.  Output is written with
``writelines`` (headers and bodies together, never interleaved), control
frames first; while the transport asks us to pause, only control frames are
written and data stays in the streams' queues.

Waiters (reads, drains, accepts, opens, pings) are plain futures resolved
directly from the event handlers; every one of them is woken when the
session ends.

What "written" means: :meth:`Stream.write` queues; :meth:`Stream.drain`
returns once every byte written on the stream has been handed to the
transport; :meth:`Session.close` is graceful and bounded: it goes on sending
what the streams already wrote (as the peer's windows allow) for at most
``Config.close_timeout`` seconds, then flushes the transport and, on a
socket, shuts its write side and reads until the peer's EOF before closing
(the lingering close of :meth:`_TransportIO.close`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time

from .config import Config
from .core import (
    ConnectionTerminated,
    Connection,
    DataReceived,
    GoAwayReceived,
    OpenSlotAvailable,
    PingAcked,
    PingTimedOut,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamState,
)
from .errors import (
    KeepAliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    YamuxError,
    YamuxTimeoutError,
)
from .frame import GO_AWAY_NORMAL

logger = logging.getLogger("yamux")

#: Payload bytes handed to the transport per take_output call.
_FLUSH_BUDGET = 1024 * 1024
#: Transport write-buffer limits: above HIGH we stop adding Data frames.
_TRANSPORT_HIGH = 512 * 1024
_TRANSPORT_LOW = 128 * 1024
#: Read size of the generic StreamReader path.
_READ_SIZE = 256 * 1024
#: Read buffer of a session on a transport (socket, pipe): reused for every read.
_READ_BUFFER = 256 * 1024
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


# ---------------------------------------------------------------------------
# Transport adapters
# ---------------------------------------------------------------------------


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
# Session
# ---------------------------------------------------------------------------


class Session:
    """A yamux session over a byte channel, in either role.

    Construct it from a ``(StreamReader, StreamWriter)`` pair inside a running
    loop, or use the faster :meth:`connect_unix`, :meth:`from_socket` and
    :meth:`from_fd`, which read through an ``asyncio.Protocol``.
    """

    def __init__(self, reader, writer, *, client: bool, config: Config | None = None) -> None:
        self._setup(client, config)
        self._io = _StreamPairIO(self, reader, writer)
        self._start()

    # ------------------------------------------------------------ creation

    @classmethod
    async def connect_unix(cls, path, *, client: bool, config: Config | None = None) -> Session:
        """Connect to a unix socket at ``path`` and run a session over it."""
        self = cls._new(client, config)
        await self._loop.create_unix_connection(lambda: _SessionProtocol(self), path)
        self._start()
        return self

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, client: bool, config: Config | None = None) -> Session:
        """Run a session over a connected stream socket (the session owns it)."""
        self = cls._new(client, config)
        await self._loop.connect_accepted_socket(lambda: _SessionProtocol(self), sock)
        self._start()
        return self

    @classmethod
    async def from_fd(cls, fd: int, *, client: bool, config: Config | None = None) -> Session:
        """Run a session over a bidirectional fd that is a character device or
        pipe-like (e.g. a virtio-serial port ``/dev/vportNpM``).  A socket fd
        is handed to :meth:`from_socket` (on a duplicate).

        The fd is duplicated twice (read side, write side) and set non-blocking
        (this affects the shared open file description).  The caller keeps
        ``fd`` and may close it; the session closes its duplicates.
        """
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            # a pipe transport would take the socket's incoming data for "closed"
            sock = socket.socket(fileno=os.dup(fd))
            return await cls.from_socket(sock, client=client, config=config)
        self = cls._new(client, config)
        loop = self._loop
        write_fd = os.dup(fd)
        try:
            read_fd = os.dup(fd)
        except BaseException:
            os.close(write_fd)
            raise
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        write_file = open(write_fd, "wb", buffering=0, closefd=True)
        read_file = open(read_fd, "rb", buffering=0, closefd=True)
        try:
            await loop.connect_write_pipe(lambda: _SessionProtocol(self), write_file)
        except BaseException:
            write_file.close()
            read_file.close()
            raise
        try:
            await loop.connect_read_pipe(lambda: _SessionProtocol(self, writable=False), read_file)
        except BaseException:
            read_file.close()
            self._close_io()
            raise
        self._start()
        return self

    @classmethod
    def _new(cls, client: bool, config: Config | None) -> Session:
        self = cls.__new__(cls)
        self._setup(client, config)
        self._io = _TransportIO(self)
        return self

    def _setup(self, client: bool, config: Config | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._config = config = config or Config()
        self._conn = Connection(client=client, config=config)
        self.is_client = client
        self._closed = False  # the session has ended
        self._error: BaseException | None = None
        self._paused = False
        self._flush_scheduled = False
        self._write = _write_nowhere
        self._io_closed = False
        self._accept_waiters: list = []
        self._open_waiters: list = []
        self._pings: dict = {}
        self._blocked_writers: set = set()
        self._rbuf: memoryview | None = None  # read buffer of the buffered protocol
        self._timer: asyncio.TimerHandle | None = None  # the core's timers (get_timer)
        self._timer_at = 0.0
        self._close_timer: asyncio.TimerHandle | None = None  # bound of a graceful close()
        self._close_deadline: float | None = None  # loop time; also bounds the transport's flush
        self._committed: dict = {}  # streams whose drain() returned before the flush: hand them over

    def _start(self) -> None:
        self._conn.start_keepalive(self._loop.time())
        self._arm_timer()

    # ------------------------------------------------------------ properties

    @property
    def config(self) -> Config:
        return self._config

    @property
    def closed(self) -> bool:
        """True once the session has ended (closed locally, by the peer, or by an error)."""
        return self._closed

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun (and stays True after the end)."""
        return self._conn.closing

    @property
    def error(self) -> BaseException | None:
        """What ended the session, or None for a clean close (local close, or
        the peer's Go Away(0) followed by EOF)."""
        return self._error

    @property
    def streams(self) -> dict:
        """Live streams by id (a snapshot)."""
        return {sid: st.user for sid, st in self._conn.streams.items()}

    @property
    def num_streams(self) -> int:
        return len(self._conn.streams)

    @property
    def local_go_away(self) -> bool:
        return self._conn.local_go_away

    @property
    def remote_go_away(self) -> bool:
        return self._conn.remote_go_away

    @property
    def connection(self) -> Connection:
        """The sans-IO core (for inspection)."""
        return self._conn

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        state = "closed" if self._closed else "open"
        return f"<yamux.Session {role} {state} streams={self.num_streams}>"

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # ------------------------------------------------------------ public API

    async def open_stream(self) -> Stream:
        """Open a new stream.  Never waits for the peer's ACK; waits only while
        ``accept_backlog`` of our opens are un-ACKed.  Raises
        :class:`GoAwayError` after the peer's Go Away, and
        :class:`SessionClosedError` once :meth:`close` has begun or the session
        has ended."""
        conn = self._conn
        while True:
            if self._closed:
                raise self._closed_exc()
            if conn.closing or conn.remote_go_away or conn.can_open():
                stream = Stream(self, conn.open_stream())  # raises when closing or after Go Away
                self._schedule_flush()
                return stream
            await self._wait(self._open_waiters)

    async def accept_stream(self) -> Stream:
        """The next stream opened by the peer (its ACK is sent now), waiting
        for one.  Streams the peer opened before the session ended are still
        returned after the end, in order, with what the peer wrote (and its
        FIN) readable; then :class:`SessionClosedError` is raised.  A stream
        the peer opened, wrote and closed just before it closed its session
        is therefore never lost.  (hashicorp/yamux's ``AcceptStream``,
        session.go, selects at random between a queued stream and the
        shutdown, so Go may lose it; the wire behaviour is the same: no ACK
        is sent after the end.)"""
        conn = self._conn
        while True:
            st = conn.accept()
            if st is not None:
                self._schedule_flush()
                return st.user
            if self._closed:
                raise self._closed_exc()
            await self._wait(self._accept_waiters)

    async def ping(self) -> float:
        """Round-trip time of one ping, in seconds.  Raises
        :class:`YamuxTimeoutError` after ``connection_write_timeout``."""
        if self._closed:
            raise self._closed_exc()
        opaque = self._conn.ping(self._loop.time())  # the core times it out (PingTimedOut)
        fut = self._loop.create_future()
        self._pings[opaque] = fut
        self._arm_timer()
        start = time.perf_counter()
        self._flush()
        try:
            await fut
        finally:
            self._pings.pop(opaque, None)
        return time.perf_counter() - start

    async def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Send Go Away.  With 0, inbound SYNs are refused with RST from now
        on; existing streams go on.  Another code ends the session."""
        if self._closed:
            return
        self._conn.go_away(code)
        self._flush()
        if self._closed:
            await self.wait_closed()

    async def close(self) -> None:
        """Close the session gracefully, in at most ``config.close_timeout`` seconds.

        Go Away(0) goes out first: the peer opens no more streams.  From then
        on :meth:`open_stream` and stream writes raise
        :class:`SessionClosedError` (:attr:`closing` is True), while what the
        streams already wrote, and FINs after it, still go out as the peer's
        windows allow (the peer must keep reading for that); received data is
        still delivered meanwhile.  Once nothing is left (at once if nothing
        is queued) the session ends: every waiter is woken, the transport is
        flushed and closed; a socket lingers first (write side shut, read
        until the peer's EOF) so that a peer still writing is not cut off.
        At the deadline whatever is still queued is
        dropped (a warning gives the byte count) and the transport is
        aborted.  Streams left open are not FIN'd: the peer sees the session
        end.

        Returns once the session has ended and its transport is closed.
        Idempotent; concurrent calls wait for the same end.  Cancelling the
        caller does not stop the close (the deadline still applies).

        hashicorp/yamux's ``Session.Close`` closes the connection at once; it
        loses nothing written because its ``Stream.Write`` returns only once
        the frames were written to the connection.  Our writes queue, hence
        the bounded wait (:meth:`Stream.drain` gives Go's guarantee per
        write).
        """
        if not self._closed and not self._conn.closing:
            timeout = self._config.close_timeout
            self._close_deadline = self._loop.time() + timeout
            self._close_timer = self._loop.call_later(timeout, self._close_expired)
            self._handle_events(self._conn.begin_close())
            self._wake_all(self._open_waiters)  # they now fail: no new streams
            self._flush()
        await self.wait_closed()

    def _close_expired(self) -> None:
        """close_timeout is over: drop what is still queued and end now."""
        self._close_timer = None
        if not self._closed:
            self._handle_events(self._conn.close())
            self._flush()

    async def wait_closed(self) -> None:
        """Wait until the session has ended and its transport is closed."""
        await asyncio.shield(self._io.done)  # cancelling the caller raises CancelledError here

    # ------------------------------------------------------------ internals

    def _arm_timer(self) -> None:
        """One loop timer at the core's next deadline (get_timer); none when
        the core has none.  Called wherever a deadline may have come nearer."""
        when = self._conn.get_timer()
        handle = self._timer
        if handle is not None:
            if when is not None and when >= self._timer_at:
                return  # fires first; then re-armed
            handle.cancel()
            self._timer = None
        if when is not None:
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # a loop may fire a timer a little early (uvloop: millisecond ticks)
        events = self._conn.handle_timer(max(self._loop.time(), self._timer_at))
        if events:
            self._handle_events(events)
        self._flush()
        self._arm_timer()

    def _closed_exc(self) -> BaseException:
        return self._conn.closed_error()

    async def _wait(self, waiters: list) -> None:
        fut = self._loop.create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            try:
                waiters.remove(fut)
            except ValueError:
                pass

    @staticmethod
    def _wake_all(waiters: list) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _on_data(self, data) -> None:
        conn = self._conn
        events = conn.receive_data(data)
        direct = conn.take_direct()
        if direct:
            self._forward(direct)
        if events:
            self._handle_events(events)
        if conn.wants_flush or self._closed or self._blocked_writers:
            self._flush()

    def _get_buffer(self, sizehint: int) -> memoryview:
        rbuf = self._rbuf
        if rbuf is None:
            self._rbuf = rbuf = memoryview(bytearray(_READ_BUFFER))
        return rbuf

    def _on_buffer(self, nbytes: int) -> None:
        """``nbytes`` arrived in the read buffer, which is reused for the next read:
        the core copies what it keeps, spliced payload is written out (or copied) now."""
        conn = self._conn
        events = conn.receive_data(self._rbuf[:nbytes], transient=True)
        direct = conn.take_direct()
        if direct:
            self._forward(direct, True)
        if events:
            self._handle_events(events)
        if conn.wants_flush or self._closed or self._blocked_writers:
            self._flush()

    @staticmethod
    def _forward(direct: list, transient: bool = False) -> None:
        """Hand payload of direct (spliced) streams to their sinks, in order;
        consecutive pieces of one stream in one call (one write).  Transient
        payload (views of the read buffer) must not outlive the call."""
        if len(direct) == 2:
            sink = direct[0].user._sink
            if sink is not None:  # None: an earlier payload failed it, the stream is reset
                if transient:
                    sink.forward_now(direct[1:])
                else:
                    sink.transport.write(direct[1])
            return
        n = len(direct)
        i = 0
        while i < n:
            st = direct[i]
            j = i + 2
            while j < n and direct[j] is st:
                j += 2
            sink = st.user._sink
            if sink is not None:
                if transient:
                    sink.forward_now(direct[i + 1 : j : 2])
                elif j - i == 2:
                    sink.forward(direct[i + 1])
                else:
                    sink.forward_many(direct[i + 1 : j : 2])
            i = j

    def _send(self, out: list) -> None:
        """Write buffers from the core now (the caller checked we are not paused)."""
        try:
            self._write(out)
        except Exception as exc:  # the transport went away under us
            self._on_lost(exc)

    def _on_eof(self) -> None:
        if not self._closed:
            self._handle_events(self._conn.connection_lost(None))
        self._flush()

    def _on_lost(self, exc) -> None:
        if not self._closed:
            error = None
            if exc is not None:
                error = SessionClosedError(f"connection lost: {exc!r}")
                error.__cause__ = exc
            self._handle_events(self._conn.connection_lost(error))
        self._io_closed = True
        if isinstance(self._io, _TransportIO):
            self._io.lost()
            self._io.close(self._config.connection_write_timeout)  # the other pipe end, if any
        else:
            self._io.close(self._config.connection_write_timeout)

    def _resume(self) -> None:
        self._paused = False
        self._flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the core has to send (control first, data unless paused)."""
        self._flush_scheduled = False
        conn = self._conn
        if conn.has_events:
            self._handle_events(conn.take_events())
        if not self._io_closed:
            while True:
                out = conn.take_output(0 if self._paused else _FLUSH_BUDGET)
                if out:
                    try:
                        self._write(out)
                    except Exception as exc:  # the transport went away under us
                        self._on_lost(exc)
                        break
                if self._paused or not conn.has_pending_data or self._io_closed:
                    break
            if self._committed:
                self._flush_committed()
            if conn.has_events:
                self._handle_events(conn.take_events())
            if self._closed and not self._io_closed:
                self._close_io()
        if self._blocked_writers:
            self._wake_writers()

    def _flush_committed(self) -> None:
        """Hand over what drain() promised, even if the transport paused
        during this flush (at most each stream's send window)."""
        committed = self._committed
        self._committed = {}
        conn = self._conn
        for st in committed:
            if st.send_len and not self._io_closed:
                out = conn.take_stream_output(st)
                if out:
                    try:
                        self._write(out)
                    except Exception as exc:  # the transport went away under us
                        self._on_lost(exc)

    def _close_io(self) -> None:
        if not self._io_closed:
            self._io_closed = True
            deadline = self._close_deadline
            if deadline is None:  # the session ended by itself
                timeout = self._config.connection_write_timeout
            else:  # close(): the flush shares its deadline
                timeout = max(0.0, deadline - self._loop.time())
            # a clean end lingers until the peer's EOF (see _TransportIO.close)
            self._io.close(timeout, linger=self._error is None)

    def _wake_writers(self) -> None:
        for stream in list(self._blocked_writers):
            st = stream._st
            # splice() waits for a queue at or below _high; drain() for one
            # within the send window while the transport accepts data
            if stream._writable_cb is not None:
                limit = stream._high
            else:
                limit = 0 if self._paused else st.send_window
            if st.send_len <= limit or st.reset or self._closed:
                stream._writable()

    def _handle_events(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                event.stream.user._readable()
            elif kind is StreamOpened:
                Stream(self, event.stream)
                self._wake_all(self._accept_waiters)
            elif kind is StreamClosed:
                event.stream.user._finished()
            elif kind is StreamEnded:
                event.stream.user._readable()
            elif kind is StreamReset:
                stream = event.stream.user
                stream._readable()
                stream._writable()
            elif kind is OpenSlotAvailable:
                self._wake_all(self._open_waiters)
            elif kind is PingAcked:
                fut = self._pings.pop(event.opaque, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind is PingTimedOut:
                fut = self._pings.pop(event.opaque, None)
                if fut is not None and not fut.done():
                    timeout = self._config.connection_write_timeout
                    fut.set_exception(YamuxTimeoutError(f"no ping reply within {timeout} s"))
            elif kind is GoAwayReceived:
                self._wake_all(self._open_waiters)
            elif kind is ConnectionTerminated:
                self._on_terminated(event.error, event.streams, event.unsent)

    def _on_terminated(self, error: BaseException | None, streams: list, unsent: int = 0) -> None:
        self._closed = True
        self._error = error
        self._committed.clear()  # the core emptied every queue (sent, or dropped and counted)
        timer = self._close_timer
        if timer is not None:
            self._close_timer = None
            timer.cancel()
        role = "client" if self.is_client else "server"
        lost = ""
        if unsent:
            lost = f"; {unsent} bytes written on {sum(1 for st in streams if st.unsent)} streams were never sent"
        if error is not None:
            level = logging.WARNING if isinstance(error, (ProtocolError, KeepAliveTimeoutError)) else logging.INFO
            logger.log(level, "yamux %s session ended (%d live streams): %s%s", role, len(streams), error, lost)
        elif unsent:
            logger.warning(
                "yamux %s session closed after close_timeout (%s s)%s", role, self._config.close_timeout, lost
            )
        for st in streams:
            if st.user is not None:
                st.user._session_ended()
        self._wake_all(self._accept_waiters)
        self._wake_all(self._open_waiters)
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(self._closed_exc())
        self._pings.clear()
        for stream in list(self._blocked_writers):
            stream._writable()
        self._arm_timer()  # no timers run after the end: cancels it

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


def _write_nowhere(bufs) -> None:  # before a transport is attached
    raise SessionClosedError("session has no transport")


# ---------------------------------------------------------------------------
# Stream
# ---------------------------------------------------------------------------


class Stream:
    """One yamux stream.  Reads are serial (one reader at a time)."""

    def __init__(self, session: Session, st: StreamState) -> None:
        self._session = session
        self._conn = session._conn
        self._st = st
        st.user = self
        self._high = session._config.stream_write_buffer
        self._read_waiter: asyncio.Future | None = None
        self._write_waiter: asyncio.Future | None = None
        self._closed_waiter: asyncio.Future | None = None
        self._sink = None  # splice: gets stream_readable() instead of waking a reader
        self._writable_cb = None  # splice: called when the send queue has room again

    # ------------------------------------------------------------ properties

    @property
    def id(self) -> int:
        return self._st.stream_id

    @property
    def session(self) -> Session:
        return self._session

    @property
    def state(self) -> str:
        return self._st.state

    @property
    def is_reset(self) -> bool:
        return self._st.reset

    @property
    def closed(self) -> bool:
        """True once the stream is finished (both FINs, a RST, or the session ended)."""
        return self._st.freed or self._session._closed

    def at_eof(self) -> bool:
        """True if nothing is buffered and the peer has sent FIN."""
        return self._st.at_eof

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the transport (waiting for the
        peer's window or for the transport to resume)."""
        return self._st.send_len

    def __repr__(self) -> str:
        return f"<yamux.Stream id={self.id} {self.state}>"

    # ------------------------------------------------------------ reading

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``n < 0``: all that is buffered), waiting until at
        least one is available.  Returns ``b''`` at EOF (peer FIN, or after our
        own ``close()``).  Raises :class:`StreamResetError` after a RST and
        :class:`SessionClosedError` (or its :class:`ProtocolError` subclass) if
        the session ended before the peer's FIN."""
        st = self._st
        conn = self._conn
        while True:
            data = conn.next_read(st, n)  # the core decides: data, EOF (b''), wait (None) or raise
            if data is not None:
                if conn.has_control:  # a window update to send
                    self._session._schedule_flush()
                return data
            await self._wait_readable()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` on early EOF."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        st = self._st
        if st.recv_len >= n:
            data = self._conn.read(st, n)
            if self._conn.has_control:
                self._session._schedule_flush()
            return data
        chunks = []
        need = n
        while need:
            data = await self.read(need)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(chunks), n)
            chunks.append(data)
            need -= len(data)
        return b"".join(chunks)

    async def read_until_eof(self) -> bytes:
        """Everything until the peer's FIN."""
        chunks = []
        while True:
            data = await self.read()
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    async def _wait_readable(self) -> None:
        if self._read_waiter is not None:
            raise RuntimeError(f"stream {self.id}: read() called while another coroutine is already reading")
        if self._sink is not None:
            raise RuntimeError(f"stream {self.id} is being spliced")
        fut = self._session._loop.create_future()
        self._read_waiter = fut
        try:
            await fut
        finally:
            self._read_waiter = None

    # ------------------------------------------------------------ writing

    def write(self, data) -> None:
        """Queue ``data`` (bytes are kept as they are, other buffers copied);
        it goes out as the send window and the transport allow (``drain()``
        waits for that).  Raises :class:`StreamResetError` after a RST,
        :class:`StreamClosedError` after ``write_eof()``/``close()``, and
        :class:`SessionClosedError` once the session is closing or over."""
        session = self._session
        # the first write of a loop iteration may go out at once (latency);
        # later ones are coalesced into one write at the end of the iteration
        if session._flush_scheduled:
            self._conn.write(self._st, data, transport_ready=False)
            return
        out = self._conn.write(self._st, data, transport_ready=not session._paused)
        if out is not None:
            session._send(out)
        else:
            session._flush()
        session._schedule_flush()

    def writelines(self, data) -> None:
        for item in data:
            self.write(item)

    async def drain(self) -> None:
        """Wait until every byte written on this stream so far is handed to
        the transport: nothing written waits for the peer any more.

        When ``drain()`` returns, each byte written before the call has been
        handed to the transport (cut into Data frames within the stream's
        send window and written into the transport's buffer), or lies within
        the send window and is handed over by the flush already scheduled for
        this loop iteration, which runs before the event loop waits for I/O
        again, however full the transport is by then
        (``get_write_buffer_size()`` is 0 after it).  Handing over those last
        bytes with the iteration's other writes, not one write each, is what
        keeps a write()+drain() loop as fast as the old high-water mark did.

        So ``drain()`` waits while the peer's window is closed (the peer is
        not reading) and while the transport is paused (its buffer is above
        its high-water mark).  Handed to the transport is not received by the
        peer: a graceful :meth:`Session.close` flushes the transport (within
        ``close_timeout``).  This is the guarantee of a completed
        ``Stream.Write`` in hashicorp/yamux (stream.go: Write returns once
        its frames were written to the connection).

        Raises :class:`StreamResetError` if the stream was reset, and
        :class:`SessionClosedError` (or its subclass :class:`ProtocolError`)
        if the session ended with some of the written bytes never sent.
        """
        st = self._st
        session = self._session
        conn = self._conn
        while True:
            if conn.all_sent(st):  # raises if it never will be
                return
            if st.send_len <= st.send_window and not session._paused:
                # nothing waits for the peer: the flush of this iteration hands it over
                session._committed[st] = None
                session._schedule_flush()
                return
            fut = session._loop.create_future()
            self._write_waiter = fut
            session._blocked_writers.add(self)
            try:
                await fut
            finally:
                self._write_waiter = None
                session._blocked_writers.discard(self)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: FIN after the queued data (only once).  Reads go on
        until the peer's FIN."""
        self._conn.end_stream(self._st)
        self._session._schedule_flush()

    def close(self) -> None:
        """FIN (if not sent yet) and stop reading: later reads return b'' and
        data still arriving is dropped.  The stream is freed when both FINs
        have been seen."""
        session = self._session
        # the core resets it if the peer's FIN has not come within stream_close_timeout
        self._conn.close_stream(self._st, session._loop.time())
        self._readable()
        session._schedule_flush()
        session._arm_timer()

    def reset(self) -> None:
        """Abort with RST: queued data is dropped and the stream freed at once;
        blocked readers and writers get :class:`StreamResetError`."""
        st = self._st
        if st.reset or st.freed:
            return
        self._conn.reset_stream(st)
        self._readable()
        self._writable()
        self._finished()
        self._session._schedule_flush()

    async def wait_closed(self) -> None:
        """Wait until the stream is finished (both FINs or a RST) or the session ended."""
        if self.closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._session._loop.create_future()
        await asyncio.shield(self._closed_waiter)

    # ------------------------------------------------------------ wake-ups

    def _readable(self) -> None:
        sink = self._sink
        if sink is not None:
            sink.stream_readable()
            return
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _writable(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        callback = self._writable_cb
        if callback is not None:
            self._writable_cb = None
            self._session._blocked_writers.discard(self)
            callback()

    def _finished(self) -> None:
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _session_ended(self) -> None:
        self._readable()
        self._writable()
        self._finished()


# ---------------------------------------------------------------------------
# splice
# ---------------------------------------------------------------------------


class _Splice(asyncio.Protocol):
    """Copies bytes between a yamux stream and a socket transport, both ways,
    with backpressure and half-close; no task per chunk."""

    def __init__(self, stream: Stream, done: asyncio.Future, sock: socket.socket) -> None:
        self.stream = stream
        self.sock = sock  # the transport's socket, for forward_now
        self.st = stream._st
        self.session = stream._session
        self.conn = stream._conn
        self.done = done
        self.transport = None
        self.up_done = False  # socket -> stream finished (FIN queued)
        self.down_done = False  # stream -> socket finished (socket write side shut)
        self.write_paused = False
        self.read_paused = False
        self.finished = False

    # socket side

    def connection_made(self, transport) -> None:
        _set_send_buffer(transport, self.session._config.socket_send_buffer)
        self.transport = transport
        self.stream._sink = self
        self.conn.set_direct(self.st, True)  # the session hands us payload as it arrives (forward)
        self.stream_readable()

    def data_received(self, data) -> None:
        # The chunk goes out at once as one Data frame when the window allows
        # (no queueing, no scheduled flush); otherwise it is queued and sent
        # as window updates or the transport's resume_writing allow.
        session = self.session
        st = self.st
        try:
            out = self.conn.write(st, data, transport_ready=not session._paused)
            if out is not None:
                session._send(out)
                return
            if not session._paused:
                session._flush()
        except SessionClosedError:
            if self.conn.closing and not self.conn.closed:
                # a graceful close is sending what the stream already queued:
                # stop reading the socket (this chunk came too late) and let it
                self.stop_reading_while_closing()
            else:
                self.fail()
            return
        except YamuxError:
            self.fail()
            return
        stream = self.stream
        if st.send_len > stream._high and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
            stream._writable_cb = self.stream_writable
            self.session._blocked_writers.add(stream)

    def eof_received(self):
        if not self.up_done:
            self.up_done = True
            try:
                self.stream.write_eof()
            except YamuxError:
                self.fail()
                return False
            self.check_done()
        return True  # keep the socket open for writing

    def connection_lost(self, exc) -> None:
        if not self.finished:
            self.fail()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.conn.set_direct(self.st, False)  # payload waits in the stream's buffer (its window closes)

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.finished:
            self.conn.set_direct(self.st, True)
        self.stream_readable()

    def forward(self, payload) -> None:
        """Payload of the stream, straight from the session's reader."""
        if not self.finished:
            self.transport.write(payload)

    def forward_many(self, payloads: list) -> None:
        if not self.finished:
            self.transport.writelines(payloads)

    def forward_now(self, payloads: list) -> None:
        """Payload that is only valid during this call (views of the session's
        read buffer): sent to the socket now when the transport has nothing
        queued; what the socket does not take is copied to the transport."""
        transport = self.transport
        if self.finished or transport.is_closing():
            # closing by itself (a write error): connection_lost() fails us next;
            # its fd may already be closed, so never write to it directly
            return
        if transport.get_write_buffer_size():
            transport.write(b"".join(payloads))  # behind queued data: a copy
            return
        try:
            if len(payloads) == 1:
                sent = self.sock.send(payloads[0], _MSG_NOSIGNAL)
            else:
                sent = self.sock.sendmsg(payloads, (), _MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # the peer of the socket is gone: as the transport's own write would
            self.fail()
            return
        rest = []
        for piece in payloads:
            size = len(piece)
            if sent >= size:
                sent -= size
                continue
            rest.append(piece[sent:] if sent else piece)
            sent = 0
        if rest:
            transport.write(b"".join(rest))  # a copy; the transport pauses us if it is full

    # stream side

    def stream_writable(self) -> None:
        if self.finished:
            return
        st = self.st
        if st.reset or (self.session._closed and not self.up_done):
            self.fail()
            return
        if self.conn.closing and not self.session._closed:
            if self.read_paused:
                self.stop_reading_while_closing()  # stay paused until the session ends
            return
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def stop_reading_while_closing(self) -> None:
        """The session is closing: the socket is not read any more; we are
        called back (and fail) when the session ends."""
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        stream = self.stream
        stream._writable_cb = self.stream_writable
        self.session._blocked_writers.add(stream)

    def stream_readable(self) -> None:
        if self.finished:
            return
        st = self.st
        if self.write_paused:
            # payload waits for resume_writing(); a RST or the session's end
            # must not wait for a socket peer that may never read again
            if st.reset or (self.session._closed and not st.remote_fin):
                self.fail()
            return
        conn = self.conn
        if st.recv_len:
            self.transport.writelines(conn.take_received(st))
            if conn.has_control:
                self.session._schedule_flush()
        if st.reset:
            self.fail()
            return
        if conn.remote_ended(st):  # FIN, all taken: half-close the socket
            if not self.down_done:
                self.down_done = True
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                self.check_done()
        elif self.session._closed:
            self.fail()

    def check_done(self) -> None:
        if self.up_done and self.down_done and not self.finished:
            self.finish()
            self.transport.close()
            self.stream.close()

    def fail(self) -> None:
        if self.finished:
            return
        self.finish()
        self.stream.reset()
        if self.transport is not None:
            self.transport.abort()

    def finish(self) -> None:
        self.finished = True
        self.conn.set_direct(self.st, False)
        stream = self.stream
        stream._sink = None
        stream._writable_cb = None
        self.session._blocked_writers.discard(stream)
        if not self.done.done():
            self.done.set_result(None)


async def splice(stream: Stream, sock: socket.socket) -> None:
    """Copy bytes both ways between ``stream`` and a connected socket.

    Backpressure both ways (the socket is not read while the stream's queue is
    full; the stream's buffer is not taken while the socket's write buffer is
    full, so the peer's window closes).  EOF on one side half-closes the other
    (FIN / ``shutdown(SHUT_WR)``); an error on either side resets the stream and
    closes the socket.  Returns when both directions are done; the socket is
    closed.  Cancelling resets the stream and closes the socket.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    splicer = _Splice(stream, done, sock)
    try:
        await loop.connect_accepted_socket(lambda: splicer, sock)
    except BaseException:
        stream.reset()
        sock.close()
        raise
    try:
        await done
    except asyncio.CancelledError:
        splicer.fail()
        raise
