"""The asyncio :class:`Session`: drives a sans-IO :class:`~yamux.core.Connection`.

Bytes come in through an ``asyncio.Protocol`` on the fast paths
(:meth:`Session.connect_unix`, :meth:`Session.from_socket`,
:meth:`Session.from_fd`), or from a reader task for a generic
``(StreamReader, StreamWriter)`` pair (``yamux.transport``).  Output is
written with ``writelines`` (headers and bodies together, never
interleaved), control frames first; while the transport asks us to pause,
only control frames are written and data stays in the streams' queues.

Waiters (reads, drains, accepts, opens, pings) are plain futures resolved
directly from the event handlers; every one of them is woken when the
session ends.  The core's timers (keepalive, ping deadlines, stream close
timeouts) run on one loop timer (:meth:`Session._arm_timer`).

What "written" means: :meth:`~yamux.stream.Stream.write` queues;
:meth:`~yamux.stream.Stream.drain` returns once every byte written on the
stream has been handed to the transport; :meth:`Session.close` is graceful
and bounded: it goes on sending what the streams already wrote (as the
peer's windows allow) for at most ``Config.close_timeout`` seconds, then
flushes the transport and, on a socket, shuts its write side and reads
until the peer's EOF before closing (the lingering close of
:meth:`yamux.transport._TransportIO.close`).
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
)
from .errors import (
    KeepAliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    YamuxTimeoutError,
)
from .frame import GO_AWAY_NORMAL
from .stream import Stream
from .transport import _SessionProtocol, _StreamPairIO, _TransportIO

logger = logging.getLogger("yamux")

#: Payload bytes handed to the transport per take_output call.
_FLUSH_BUDGET = 1024 * 1024
#: Read buffer of a session on a transport (socket, pipe): reused for every read.
_READ_BUFFER = 256 * 1024


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
        """Connect to a unix socket at ``path`` and run a session over it.
        Raises ``OSError`` when the connection fails."""
        self = cls._new(client, config)
        await self._loop.create_unix_connection(lambda: _SessionProtocol(self), path)
        self._start()
        return self

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, client: bool, config: Config | None = None) -> Session:
        """Run a session over a connected stream socket (the session owns it:
        closed with the session).  Raises ``OSError`` if the loop cannot
        take the socket."""
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
        :class:`YamuxTimeoutError` after ``connection_write_timeout`` (the
        session goes on), and the session's error (a
        :class:`SessionClosedError`) once it has ended."""
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
        if conn.direct:
            self._forward(conn.take_direct())
        if events:
            self._handle_events(events)
        if conn.control or conn.ready or conn.events or self._closed or self._blocked_writers:
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
        if conn.direct:
            self._forward(conn.take_direct(), True)
        if events:
            self._handle_events(events)
        if conn.control or conn.ready or conn.events or self._closed or self._blocked_writers:
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
        if conn.events:
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
                if self._paused or not conn.ready or self._io_closed:
                    break
            if self._committed:
                self._flush_committed()
            if conn.events:
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
                self._arm_timer()  # a keepalive reply brings the next keepalive ping nearer
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


def _write_nowhere(bufs) -> None:  # before a transport is attached
    raise SessionClosedError("session has no transport")


# ---------------------------------------------------------------------------
