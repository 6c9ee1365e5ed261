"""The asyncio :class:`Stream`: one yamux stream of a :class:`~yamux.session.Session`.

Reads, writes and closes go to the session's sans-IO core, which decides
(``Connection.next_read``, ``write``, ``all_sent``); this layer waits and
wakes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .core import StreamState

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session


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
            if st.recv_len and n:  # the common case: data is there
                data = conn.read(st, n)
            else:
                data = conn.next_read(st, n)  # the core decides: EOF (b''), wait (None) or raise
                if data is None:
                    await self._wait_readable()
                    continue
            if conn.control:  # a window update to send
                self._session._schedule_flush()
            return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` on early EOF."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        st = self._st
        if st.recv_len >= n:
            data = self._conn.read(st, n)
            if self._conn.control:
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
