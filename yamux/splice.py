"""The splice fast path: a yamux stream copied to and from a socket, both
ways, with backpressure and half-close, without a task per chunk.

The session hands a spliced ("direct") stream's payload straight to the
socket from its read callback (``Connection.take_direct``); the socket's
chunks go out as Data frames at once when the window allows.
"""

from __future__ import annotations

import asyncio
import socket

from .errors import SessionClosedError, YamuxError
from .stream import Stream
from .transport import _set_send_buffer

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


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
            if conn.control:
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
