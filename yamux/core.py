"""Sans-IO yamux session: frame parsing, stream state machines, windows.

No I/O and no asyncio here.  A :class:`Connection` is fed the bytes that
arrived (:meth:`Connection.receive_data`) and returns :class:`Event` objects;
the bytes to send are collected with :meth:`Connection.take_output`, a list of
buffers (12-byte headers and body pieces) to write in order, e.g. with
``transport.writelines``.  Control frames (SYN/ACK/FIN/RST, window updates,
pings, Go Away) always come before queued Data frames.

Each stream is a :class:`StreamState`.  The receive buffer holds the payload
as it arrived (bytes, or memoryviews of the received chunk when the payload is
most of it), so memory per stream stays bounded by its receive window.  The
send queue holds what the application wrote; Data frames are cut from it no
larger than the stream's send window.

Protocol errors end the session: a Go Away(1) is queued (best effort), the
connection is marked closed with a :class:`~yamux.errors.ProtocolError`
saying what was wrong, and a :class:`ConnectionTerminated` event is returned.

Timers follow aioquic's shape: the I/O layer arms one timer for
:meth:`Connection.get_timer` (a time on the clock it passes as ``now``, in
seconds) and calls :meth:`Connection.handle_timer` when it fires.  They are
the keepalive pings, the deadline of each ping, and the close timeout of
each stream closed with a ``now``.

Ending a session locally is either immediate (:meth:`Connection.close`: what
is still queued is dropped) or graceful (:meth:`Connection.begin_close`: no
new streams or writes, but what the streams already wrote, and their FINs,
still go out as the peer's windows allow; the session ends once nothing is
left).  hashicorp/yamux has no graceful close: there a completed
``Stream.Write`` has already handed its frame to the connection, so its
``Session.Close`` loses nothing the application wrote; our writes only queue,
so the graceful close is what gives the same guarantee.  Bounding it in time
is the I/O layer's job (it calls :meth:`Connection.close` when its timer
expires).
"""

from __future__ import annotations

from collections import deque

from .config import Config
from .errors import (
    GoAwayError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    KeepAliveTimeoutError,
    StreamResetError,
    YamuxError,
    copy_error,
)
from .frame import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_UINT32,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    pack_header,
    unpack_header_from,
)

#: Largest Data frame we cut, whatever the window (keeps control frames from
#: waiting behind one huge body).
MAX_DATA_FRAME = 256 * 1024

#: Default amount of Data payload one ``take_output`` call hands out.
DEFAULT_OUTPUT_BUDGET = 1024 * 1024

#: A frame body cut from more queued pieces than this is joined into one bytes.
_JOIN_PIECES = 8

#: Received payloads at least this long are kept as views of the received
#: chunk (no copy); shorter ones are copied unless they are most of the chunk.
_VIEW_MIN = 16 * 1024

#: Payloads up to this size are handed out as bytes (one small copy) rather than
#: as views, and sent joined to their frame header: one small buffer is cheaper
#: to write than a header plus a view.
_SMALL = 4096


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


class Event:
    __slots__ = ()

    def __repr__(self) -> str:
        names = [name for cls in reversed(type(self).__mro__) for name in getattr(cls, "__slots__", ())]
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"


class StreamEvent(Event):
    """An event about one stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: StreamState) -> None:
        self.stream = stream


class StreamOpened(StreamEvent):
    """The peer opened a stream; it waits in the accept queue."""

    __slots__ = ()


class DataReceived(StreamEvent):
    """The stream's receive buffer became non-empty."""

    __slots__ = ()


class StreamEnded(StreamEvent):
    """The peer sent FIN: after the buffered data, the stream is at EOF."""

    __slots__ = ()


class StreamReset(StreamEvent):
    """The stream was reset: the peer sent RST, or our close of it timed out
    (``stream_close_timeout``, from :meth:`Connection.handle_timer`)."""

    __slots__ = ()


class StreamClosed(StreamEvent):
    """The stream is finished (both FINs, or a RST) and forgotten by the session."""

    __slots__ = ()


class OpenSlotAvailable(Event):
    """An un-ACKed open was settled: ``open_stream`` may proceed again."""

    __slots__ = ()


class PingAcked(Event):
    """A reply to our ping ``opaque`` arrived."""

    __slots__ = ("opaque",)

    def __init__(self, opaque: int) -> None:
        self.opaque = opaque


class PingTimedOut(Event):
    """No reply to our ping ``opaque`` within ``connection_write_timeout``
    (from :meth:`Connection.handle_timer`); the session goes on."""

    __slots__ = ("opaque",)

    def __init__(self, opaque: int) -> None:
        self.opaque = opaque


class GoAwayReceived(Event):
    """The peer sent Go Away with ``code`` (0: no new streams; others end the session)."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class ConnectionTerminated(Event):
    """The session is over.  ``error`` is None for a local close (or the peer's
    Go Away(0) followed by EOF), else the reason.

    ``streams`` are the streams that were still live: their readers and writers
    must be woken.  ``unsent`` is the number of payload bytes the application
    had written on them that were dropped unsent (0 after a graceful close that
    completed); each stream's share is in its ``unsent`` attribute.
    """

    __slots__ = ("error", "streams", "unsent")

    def __init__(self, error: BaseException | None, streams: list, unsent: int = 0) -> None:
        self.error = error
        self.streams = streams
        self.unsent = unsent


class _Stop(Exception):
    """Internal: stop parsing (the session ended on a received frame)."""


# --------------------------------------------------------------------------
# Stream state
# --------------------------------------------------------------------------


class StreamPhase:
    """The states of a stream: hashicorp/yamux's (stream.go, ``streamInit`` ...
    ``streamReset``), as small ints (compared on the hot path).

    ::

        INIT -> SYN_SENT (we opened it) | SYN_RECEIVED (the peer's SYN)
        SYN_SENT | SYN_RECEIVED -> ESTABLISHED (the ACK: received, or ours sent on accept)
        SYN_* | ESTABLISHED -> LOCAL_CLOSE (our write side closed) | REMOTE_CLOSE (the peer's FIN)
        LOCAL_CLOSE + the peer's FIN, REMOTE_CLOSE + our close -> CLOSED
        any -> RESET (RST sent or received)

    As in hashicorp/yamux, our close moves to LOCAL_CLOSE at once; here its
    FIN may still wait behind queued data (``StreamState.fin_sent`` says when
    it went out), and the stream is forgotten once CLOSED with its FIN sent.
    Every change goes through :func:`advance`.
    """

    INIT = 0
    SYN_SENT = 1
    SYN_RECEIVED = 2
    ESTABLISHED = 3
    LOCAL_CLOSE = 4
    REMOTE_CLOSE = 5
    CLOSED = 6
    RESET = 7

    NAMES = ("init", "syn-sent", "syn-received", "established", "local-close", "remote-close", "closed", "reset")


# What happens to a stream (the inputs of the state machine).
OPEN, SYN, ACK, LOCAL_FIN, REMOTE_FIN, RST = "open", "syn", "ack", "local-fin", "remote-fin", "rst"

_P = StreamPhase
_TRANSITIONS = {
    (_P.INIT, OPEN): _P.SYN_SENT,
    (_P.INIT, SYN): _P.SYN_RECEIVED,
    (_P.SYN_SENT, ACK): _P.ESTABLISHED,
    (_P.SYN_RECEIVED, ACK): _P.ESTABLISHED,
    (_P.SYN_SENT, LOCAL_FIN): _P.LOCAL_CLOSE,
    (_P.SYN_RECEIVED, LOCAL_FIN): _P.LOCAL_CLOSE,
    (_P.ESTABLISHED, LOCAL_FIN): _P.LOCAL_CLOSE,
    (_P.REMOTE_CLOSE, LOCAL_FIN): _P.CLOSED,
    (_P.SYN_SENT, REMOTE_FIN): _P.REMOTE_CLOSE,
    (_P.SYN_RECEIVED, REMOTE_FIN): _P.REMOTE_CLOSE,
    (_P.ESTABLISHED, REMOTE_FIN): _P.REMOTE_CLOSE,
    (_P.LOCAL_CLOSE, REMOTE_FIN): _P.CLOSED,
}
#: Phases in which the peer may still send data (no FIN or RST from it yet).
_PEER_OPEN = frozenset((_P.SYN_SENT, _P.SYN_RECEIVED, _P.ESTABLISHED, _P.LOCAL_CLOSE))
#: Phases after our close (write side shut), before any RST.
_LOCALLY_CLOSED = frozenset((_P.LOCAL_CLOSE, _P.CLOSED))
#: Phases after the peer's FIN, before any RST.
_REMOTELY_CLOSED = frozenset((_P.REMOTE_CLOSE, _P.CLOSED))
_RESET = _P.RESET


def advance(st: StreamState, event: str) -> None:
    """Move ``st`` to its next phase on ``event`` (one of OPEN, SYN, ACK,
    LOCAL_FIN, REMOTE_FIN, RST): the one place a stream's phase changes.
    An event that changes nothing in the current phase (a late ACK, an ACK
    in LOCAL_CLOSE, anything after RESET but RST) leaves it, as hashicorp's
    ``processFlags`` does."""
    if event == RST:
        st.phase = _RESET
        return
    phase = _TRANSITIONS.get((st.phase, event))
    if phase is not None:
        st.phase = phase


class StreamState:
    """One stream's state.  Attributes are read by the I/O layer; change them
    only through :class:`Connection` methods.  ``phase`` is a
    :class:`StreamPhase`; ``reset``, ``remote_fin``, ``acked`` and
    ``fin_pending`` are read-only views of it."""

    __slots__ = (
        "stream_id",
        "outbound",  # we opened it
        "phase",  # StreamPhase
        "accepted",  # inbound: handed to the application
        "counts_unacked",  # holds one of our un-ACKed open slots
        "recv_window",  # credit the peer still has
        "recv_buf",
        "recv_len",
        "pinned",  # bytes of received chunks kept alive by views in recv_buf (upper bound)
        "consumed",  # read by the application but not yet advertised
        "send_window",
        "send_buf",
        "send_len",
        "fin_sent",  # our FIN went out (after the queued data)
        "reset_by_peer",
        "read_closed",  # the application called close(): discard what arrives
        "unsent",  # bytes written but dropped unsent when the session ended
        "direct",  # hand payload out as it arrives (take_direct) while nothing is buffered
        "freed",  # forgotten by the session (CLOSED with our FIN sent, or RESET)
        "user",  # slot for the I/O layer's stream object
    )

    def __init__(self, stream_id: int, outbound: bool, recv_window: int) -> None:
        self.stream_id = stream_id
        self.outbound = outbound
        self.phase = StreamPhase.INIT
        self.accepted = outbound
        self.counts_unacked = False
        self.recv_window = recv_window
        self.recv_buf: deque = deque()
        self.recv_len = 0
        self.pinned = 0
        self.consumed = 0
        self.send_window = INITIAL_WINDOW
        self.send_buf: deque = deque()
        self.send_len = 0
        self.fin_sent = False
        self.reset_by_peer = False
        self.read_closed = False
        self.unsent = 0
        self.direct = False
        self.freed = False
        self.user = None

    @property
    def state(self) -> str:
        """The phase's name (for logs and tests): "syn-sent", "established", ..."""
        return StreamPhase.NAMES[self.phase]

    @property
    def reset(self) -> bool:
        """RST sent or received."""
        return self.phase == _RESET

    @property
    def remote_fin(self) -> bool:
        """The peer's FIN arrived (and no RST)."""
        return self.phase in _REMOTELY_CLOSED

    @property
    def acked(self) -> bool:
        """The opening handshake is over (ESTABLISHED or later)."""
        return self.phase >= StreamPhase.ESTABLISHED

    @property
    def fin_pending(self) -> bool:
        """Our write side is closed and its FIN still waits behind queued data."""
        return self.phase in _LOCALLY_CLOSED and not self.fin_sent

    @property
    def at_eof(self) -> bool:
        """Nothing buffered and nothing more will arrive (peer FIN or local close)."""
        return not self.recv_len and (self.phase in _REMOTELY_CLOSED or self.read_closed)

    def __repr__(self) -> str:
        return (
            f"<StreamState id={self.stream_id} {self.state} recv={self.recv_len}/{self.recv_window} "
            f"send={self.send_len}/{self.send_window}>"
        )


# --------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------


class Connection:
    """One yamux session, either role, without I/O.

    ``closing`` is True once :meth:`begin_close` was called, ``closed`` once
    the session has ended (``error`` then says why, None for a clean end).

    Read-only for the I/O layer (its hot path tests them for truth instead of
    calling :attr:`wants_flush` and friends): ``control``, the control frames
    waiting to be sent; ``ready``, the streams with data and send window;
    ``events``, the events not taken yet (:meth:`take_events`); ``direct``,
    the payloads of direct streams not taken yet (:meth:`take_direct`).
    """

    def __init__(self, *, client: bool, config: Config | None = None) -> None:
        self.config = config = config or Config()
        self.client = client
        self.max_window = config.max_stream_window_size
        self._extra_window = self.max_window - INITIAL_WINDOW
        self._update_threshold = self.max_window // 2
        self._pin_limit = 2 * self.max_window
        self._backlog = config.accept_backlog
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self.streams: dict[int, StreamState] = {}
        self._accept_queue: deque[StreamState] = deque()
        self._unacked_opens = 0
        self.control: list = []
        self.ready: dict[StreamState, None] = {}  # streams with sendable data, in turn
        self.direct: list = []  # [stream, payload, stream, payload, ...] for take_direct()
        self.events: list = []
        self._partial = b""  # an incomplete header
        self._transient = False  # receive_data(transient=True) is running
        self._body_left = 0  # Data body bytes still to come
        self._body_stream: StreamState | None = None  # where they go (None: discard)
        self._next_ping = 0
        self.local_go_away = False
        self.remote_go_away = False
        self.go_away_sent = False
        self.closing = False  # begin_close() was called: no new streams or writes
        self.closed = False
        self._no_writes = False  # closing or closed: send_data refuses
        self.error: BaseException | None = None
        # timers (get_timer / handle_timer), times on the caller's clock
        self._received = 0  # receive_data calls: the keepalive's sign of life
        self._keepalive_at: float | None = None  # when the next keepalive ping is due
        self._keepalive_ping: int | None = None  # its opaque while unanswered
        self._keepalive_sent = 0.0
        self._keepalive_seen = 0  # _received when it was sent
        self._ping_deadlines: dict[int, float] = {}  # opaque -> deadline, in order
        self._close_deadlines: dict[StreamState, float] = {}  # closed streams waiting for the peer's FIN

    # ---------------------------------------------------------------- input

    def receive_data(self, data, *, transient: bool = False) -> list:
        """Process received bytes; return the events they caused.

        The connection keeps references to (slices of) ``data``: pass bytes, or
        a buffer that is never modified afterwards (others are copied).

        ``transient=True``: ``data`` is a buffer the caller reuses once this
        call and the forwarding of :meth:`take_direct` are done (the read
        buffer of an ``asyncio.BufferedProtocol``).  What the connection keeps
        is copied; the payloads of direct streams are views of ``data``, to be
        written out or copied before the buffer is reused.
        """
        if not self.closed and data:
            self._received += 1
            if transient:
                if type(data) is not memoryview:
                    data = memoryview(data)
            elif type(data) is not bytes:
                data = bytes(data)
            n = len(data)
            if n > HEADER_SIZE and not (self._body_left or self._partial):
                # fast path: the chunk is exactly one Data frame without flags
                # for a direct stream (a spliced small message)
                version, ftype, flags, sid, length = unpack_header_from(data)
                if length == n - HEADER_SIZE and not (version or ftype or flags):
                    st = self.streams.get(sid)
                    if (st is not None and st.direct and not st.recv_len and length <= st.recv_window
                            and st.phase in _PEER_OPEN and not st.read_closed):
                        st.recv_window -= length
                        if transient or length <= _SMALL:
                            payload = data[HEADER_SIZE:]
                        else:
                            payload = memoryview(data)[HEADER_SIZE:]
                        self.direct += (st, payload)
                        self._consume(st, length)
                        return self.take_events()
            self._transient = transient
            try:
                self._parse(data)
            except ProtocolError as exc:
                self._fail(exc)
            except _Stop:
                pass
            finally:
                self._transient = False
            if self.closing and not self.closed:
                self._end_if_drained()  # a RST may have dropped the last queued data
        return self.take_events()

    def connection_lost(self, error: BaseException | None = None) -> list:
        """The transport ended (EOF or error).  Returns the events."""
        if not self.closed:
            if error is None:
                if self._body_left or self._partial:
                    error = SessionClosedError("connection closed by the peer in the middle of a frame")
                elif self.remote_go_away:
                    error = None  # the peer said goodbye first: a clean end
                else:
                    error = SessionClosedError("connection closed by the peer")
            self._terminate(error)
        return self.take_events()

    def take_events(self) -> list:
        events = self.events
        if events:
            self.events = []
        return events

    def take_direct(self) -> list:
        """Payload received for streams marked ``direct``, as a flat list
        ``[stream, payload, stream, payload, ...]`` in arrival order.

        A stream is marked direct (``st.direct = True``) by an I/O layer that
        forwards its payload at once (e.g. to a socket): while the stream has
        nothing buffered, arriving payload skips the receive buffer and the
        :class:`DataReceived` event, and counts as read at once (window updates
        follow as for :meth:`read`).  Payloads are bytes or memoryviews of the
        received chunk.  Take them after every :meth:`receive_data`, before the
        events it returned: a FIN or RST event of the same stream comes after
        its payload.
        """
        direct = self.direct
        if direct:
            self.direct = []
        return direct

    @property
    def has_events(self) -> bool:
        """Events are waiting for :meth:`take_events`."""
        return bool(self.events)

    @property
    def has_control(self) -> bool:
        """Control frames (window updates, ACKs, pings, ...) wait to be sent:
        the I/O layer should flush soon (after a :meth:`read`, for instance)."""
        return bool(self.control)

    @property
    def wants_flush(self) -> bool:
        """Something for the I/O layer to do after input: control frames or
        sendable data to write, or events to handle."""
        return bool(self.control or self.ready or self.events)

    def set_direct(self, st: StreamState, direct: bool) -> None:
        """Mark ``st`` direct (its payload is handed out by :meth:`take_direct`
        as it arrives, while nothing is buffered) or not (payload is buffered
        for :meth:`read`, and the peer's window closes when nobody reads)."""
        st.direct = direct

    def _parse(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        if self._body_left:
            pos = self._continue_body(data, n)
            if self._body_left:
                return
        if self._partial:
            need = HEADER_SIZE - len(self._partial)
            if n - pos < need:
                self._partial += data[pos:]  # bytes + any buffer: a new bytes
                return
            header = self._partial + data[pos : pos + need]
            self._partial = b""
            pos = self._frame(*unpack_header_from(header), data, pos + need, n)
        unpack = unpack_header_from
        frame = self._frame
        while n - pos >= HEADER_SIZE:
            pos = frame(*unpack(data, pos), data, pos + HEADER_SIZE, n)
        if pos < n:
            self._partial = bytes(data[pos:])  # a copy only for a transient buffer

    def _frame(self, version: int, ftype: int, flags: int, sid: int, length: int, data: bytes, pos: int, n: int) -> int:
        """Handle one frame whose header was parsed; its body starts at ``pos``.
        Returns the position after what was consumed."""
        if version:
            raise ProtocolError(f"unsupported protocol version {version} (expected 0)")
        if ftype == TYPE_DATA:
            return self._data_frame(flags, sid, length, data, pos, n)
        if ftype == TYPE_WINDOW_UPDATE:
            self._window_update_frame(flags, sid, length)
        elif ftype == TYPE_PING:
            self._ping_frame(flags, length)
        elif ftype == TYPE_GO_AWAY:
            self._go_away_frame(length)
        else:
            raise ProtocolError(f"unknown frame type {ftype}")
        return pos

    def _data_frame(self, flags: int, sid: int, length: int, data: bytes, pos: int, n: int) -> int:
        st = self._stream_flags(flags, sid) if flags else self.streams.get(sid)
        if st is not None and st.phase not in _PEER_OPEN and not (flags & FLAG_FIN and st.phase in _REMOTELY_CLOSED):
            st = None  # reset, or data after the peer's FIN: discard
        if st is not None:
            if length > st.recv_window:
                raise ProtocolError(
                    f"stream {sid}: Data frame of {length} bytes exceeds the receive window "
                    f"({st.recv_window} bytes left)"
                )
            st.recv_window -= length
        take = n - pos
        if take >= length:
            take = length
        else:
            self._body_left = length - take
            self._body_stream = st
        if take and st is not None:
            self._append(st, data, pos, take, n)
        return pos + take

    def _continue_body(self, data: bytes, n: int) -> int:
        take = self._body_left if self._body_left < n else n
        self._body_left -= take
        st = self._body_stream
        if not self._body_left:
            self._body_stream = None
        if st is not None and st.phase != _RESET:
            self._append(st, data, 0, take, n)
        return take

    def _append(self, st: StreamState, data: bytes, pos: int, take: int, n: int) -> None:
        if st.read_closed:
            self._consume(st, take)  # nobody reads: drop it and keep the peer's credit flowing
            return
        if st.direct and not st.recv_len:
            if take == n:
                chunk = data
            elif take <= _SMALL or self._transient:
                chunk = data[pos : pos + take]  # bytes: a small copy; transient: a view
            else:
                chunk = memoryview(data)[pos : pos + take]
            self.direct += (st, chunk)
            self._consume(st, take)
            return
        buf = st.recv_buf
        if self._transient:
            chunk = bytes(data[pos : pos + take])  # the caller reuses the buffer: copy
        elif take == n:
            chunk = data
        elif take >= _VIEW_MIN or take * 2 >= n:
            # share the received chunk (no copy); account what it keeps alive
            chunk = memoryview(data)[pos : pos + take]
            if not (buf and type(buf[-1]) is memoryview and buf[-1].obj is data):
                st.pinned += n
                if st.pinned > self._pin_limit:
                    self._compact(st)
        else:
            chunk = data[pos : pos + take]  # small: copy, don't pin the chunk
        buf.append(chunk)
        if st.recv_len:
            st.recv_len += take
        else:
            st.recv_len = take
            self.events.append(DataReceived(st))

    @staticmethod
    def _compact(st: StreamState) -> None:
        """Copy the buffered payload out of the received chunks it pins."""
        buf = st.recv_buf
        if buf:
            data = b"".join(buf)
            buf.clear()
            buf.append(data)
        st.pinned = 0

    def _window_update_frame(self, flags: int, sid: int, delta: int) -> None:
        st = self._stream_flags(flags, sid) if flags else self.streams.get(sid)
        if st is None or st.phase == _RESET or not delta:
            return
        st.send_window += delta
        if st.send_len and not self.closed:
            self.ready[st] = None

    def _stream_flags(self, flags: int, sid: int) -> StreamState | None:
        """Apply SYN/ACK/FIN/RST of a stream frame.  Returns the stream, or None
        when the frame is for no live stream (it is then ignored / discarded)."""
        if flags & FLAG_SYN:
            st = self._incoming_stream(flags, sid)
        else:
            st = self.streams.get(sid)
        if st is None:
            return None
        if flags & FLAG_ACK and st.outbound:
            advance(st, ACK)
            self._release_open_slot(st)
        if flags & FLAG_FIN:
            if st.phase in _REMOTELY_CLOSED:
                raise ProtocolError(f"stream {sid}: FIN received after the peer had already sent FIN")
            if st.phase != _RESET:
                advance(st, REMOTE_FIN)
                self.events.append(StreamEnded(st))
                if st.fin_sent:
                    self._free(st)
        if flags & FLAG_RST and st.phase != _RESET:
            advance(st, RST)
            st.reset_by_peer = True
            self._drop_buffers(st)
            self.events.append(StreamReset(st))
            self._free(st)
        return st

    def _incoming_stream(self, flags: int, sid: int) -> StreamState | None:
        if flags & FLAG_ACK:
            raise ProtocolError(f"stream {sid}: SYN and ACK in the same frame")
        if sid == 0:
            raise ProtocolError("SYN for stream id 0 (reserved for the session)")
        if sid & 1 != self._peer_parity:
            opener = "server" if self.client else "client"
            raise ProtocolError(f"SYN for stream {sid}: wrong id parity for a stream opened by the {opener}")
        if sid in self.streams:
            raise ProtocolError(f"duplicate SYN for live stream {sid}")
        if self.local_go_away or len(self._accept_queue) >= self._backlog:
            self.control.append(pack_header(0, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None
        st = StreamState(sid, outbound=False, recv_window=INITIAL_WINDOW)
        advance(st, SYN)
        self.streams[sid] = st
        self._accept_queue.append(st)
        self.events.append(StreamOpened(st))
        return st

    def _ping_frame(self, flags: int, opaque: int) -> None:
        if flags & FLAG_SYN:
            if flags & FLAG_ACK:
                raise ProtocolError("Ping frame with both SYN and ACK")
            self.control.append(pack_header(0, TYPE_PING, FLAG_ACK, 0, opaque))
        else:
            if opaque == self._keepalive_ping:  # the next one is due an interval after it was sent
                self._keepalive_ping = None
                self._keepalive_at = self._keepalive_sent + self.config.keepalive_interval
            else:
                self._ping_deadlines.pop(opaque, None)
            self.events.append(PingAcked(opaque))  # the timer may be due earlier now: get_timer()

    def _go_away_frame(self, code: int) -> None:
        self.events.append(GoAwayReceived(code))
        if code == GO_AWAY_NORMAL:
            self.remote_go_away = True
            return
        if code == GO_AWAY_PROTOCOL_ERROR:
            error: SessionClosedError = ProtocolError("the peer sent Go Away(1): it saw a protocol error from us")
        elif code == GO_AWAY_INTERNAL_ERROR:
            error = SessionClosedError("the peer sent Go Away(2): internal error")
        else:
            error = SessionClosedError(f"the peer sent Go Away with unknown code {code}")
        self._terminate(error)
        raise _Stop

    # -------------------------------------------------------------- streams

    def can_open(self) -> bool:
        """False while ``accept_backlog`` of our opens are still un-ACKed."""
        return self._unacked_opens < self._backlog

    def open_stream(self) -> StreamState:
        """Open a stream now: its SYN is queued; data may follow before the ACK.

        Raises :class:`SessionClosedError` once the session is closing or
        over, :class:`GoAwayError` after the peer's Go Away, and
        :class:`YamuxError` while ``accept_backlog`` opens are un-ACKed
        (see :meth:`can_open`) or when the stream ids are exhausted."""
        if self.closed:
            raise SessionClosedError("session closed")
        if self.closing:
            raise SessionClosedError("session is closing: no new streams")
        if self.remote_go_away:
            raise GoAwayError("the peer sent Go Away: it accepts no new streams")
        if not self.can_open():
            raise YamuxError(f"{self._unacked_opens} opened streams are still waiting for the peer's ACK")
        sid = self._next_id
        if sid > MAX_UINT32:
            raise YamuxError("stream ids exhausted")
        self._next_id = sid + 2
        st = StreamState(sid, outbound=True, recv_window=self.max_window)
        advance(st, OPEN)
        st.counts_unacked = True
        self._unacked_opens += 1
        self.streams[sid] = st
        self.control.append(pack_header(0, TYPE_WINDOW_UPDATE, FLAG_SYN, sid, self._extra_window))
        return st

    def accept(self) -> StreamState | None:
        """Pop the next inbound stream (queuing its ACK), or None if there is none.

        Streams the peer opened before the session ended are still handed out
        after the end (without an ACK): what the peer wrote, and its FIN, can
        be read from them.  A stream opened, written and closed just before
        the peer ended its session is thereby not lost."""
        if not self._accept_queue:
            return None
        st = self._accept_queue.popleft()
        st.accepted = True
        if st.phase != _RESET and not self.closed:
            advance(st, ACK)
            st.recv_window += self._extra_window
            self.control.append(pack_header(0, TYPE_WINDOW_UPDATE, FLAG_ACK, st.stream_id, self._extra_window))
        return st

    @property
    def accept_queue_length(self) -> int:
        return len(self._accept_queue)

    def send_data(self, st: StreamState, data) -> None:
        """Queue ``data`` on the stream (bytes are kept, other buffers copied).

        Raises :class:`StreamResetError` after a RST, :class:`StreamClosedError`
        after :meth:`end_stream`/:meth:`close_stream`, and
        :class:`SessionClosedError` once the session is closing or closed."""
        if st.phase == _RESET:
            raise self.reset_error(st)
        if st.phase in _LOCALLY_CLOSED:
            raise StreamClosedError(f"stream {st.stream_id}: write after write_eof()/close()")
        if self._no_writes:
            raise self._writes_refused()
        size = len(data)
        if not size:
            return
        if type(data) is not bytes:
            data = bytes(data)
            size = len(data)
        st.send_buf.append(data)
        st.send_len += size
        if st.send_window:
            self.ready[st] = None

    def send_data_now(self, st: StreamState, data) -> list | None:
        """Like :meth:`send_data`, with a fast path for a write that can go out
        whole at once: if the stream has nothing queued and its send window
        takes all of ``data`` (up to ``MAX_DATA_FRAME``), the Data frame is
        cut now and returned, after any queued control frames, as the list of
        buffers to write (what :meth:`take_output` would have returned for it).
        Otherwise ``data`` is queued as by :meth:`send_data` and None is
        returned.  Only for a caller that writes the result at once.
        """
        return self.write(st, data, transport_ready=True)

    def end_stream(self, st: StreamState) -> None:
        """Half-close: FIN after the queued data.  Idempotent (never two FINs)."""
        if st.phase in _LOCALLY_CLOSED or st.phase == _RESET or self.closed:
            return
        advance(st, LOCAL_FIN)
        if not st.send_len:
            self._send_fin(st, self.control)

    def close_stream(self, st: StreamState, now: float | None = None) -> None:
        """FIN (if not yet) and stop reading: buffered and later data is dropped,
        with the peer's credit returned so it can finish.  With ``now``
        (seconds) and a ``stream_close_timeout``, the stream is reset if the
        peer's FIN has not come by then (see :meth:`handle_timer`)."""
        self.end_stream(st)
        timeout = self.config.stream_close_timeout
        if now is not None and timeout and not (st.freed or self.closed) and st not in self._close_deadlines:
            self._close_deadlines[st] = now + timeout
        if not st.read_closed:
            st.read_closed = True
            dropped = st.recv_len
            st.recv_buf.clear()
            st.recv_len = 0
            st.pinned = 0
            if dropped:
                self._consume(st, dropped)

    def reset_stream(self, st: StreamState) -> None:
        """Abort the stream: RST, drop its buffers, forget it at once."""
        if st.phase == _RESET or st.freed:
            return
        advance(st, RST)
        self._drop_buffers(st)
        if not self.closed:
            self.control.append(pack_header(0, TYPE_WINDOW_UPDATE, FLAG_RST, st.stream_id, 0))
        self._free(st)
        if self.closing and not self.closed:
            self._end_if_drained()

    def next_read(self, st: StreamState, max_bytes: int = -1) -> bytes | None:
        """What a reader of ``st`` gets now: up to ``max_bytes`` buffered bytes
        (all if < 0); ``b''`` at EOF (the peer's FIN after the buffered data,
        after our own :meth:`close_stream`, or ``max_bytes == 0``); None when
        the reader must wait for a :class:`DataReceived`, :class:`StreamEnded`,
        :class:`StreamReset` or :class:`ConnectionTerminated` event.

        Raises :class:`StreamResetError` after a RST, and the session's error
        (:meth:`closed_error`) once the session ended before the peer's FIN.
        Buffered bytes are still returned after a RST-free end.
        """
        if st.recv_len:
            if max_bytes == 0:
                return b""
            return self.read(st, max_bytes)
        if st.phase == _RESET:
            raise self.reset_error(st)
        if st.phase in _REMOTELY_CLOSED or st.read_closed or max_bytes == 0:
            return b""
        if self.closed:
            raise self.closed_error()
        return None

    def write(self, st: StreamState, data, *, transport_ready: bool) -> list | None:
        """Write ``data`` on ``st`` (bytes are kept, other buffers copied).

        ``transport_ready`` (the transport takes data now: not paused, and no
        flush of coalesced writes pending): if the stream has nothing queued
        and its send window takes all of ``data`` (up to ``MAX_DATA_FRAME``),
        the Data frame is cut now and returned, after any queued control
        frames, as the buffers to write at once.  Otherwise ``data`` is queued
        (as by :meth:`send_data`) and None is returned.

        Raises :class:`StreamResetError` after a RST, the session's error once
        it has ended (:meth:`closed_error`), :class:`StreamClosedError` after
        :meth:`end_stream`/:meth:`close_stream`, :class:`SessionClosedError`
        once the session is closing."""
        if st.phase == _RESET:
            raise self.reset_error(st)
        if self._no_writes and self.closed:
            raise self.closed_error()
        if st.phase in _LOCALLY_CLOSED:
            raise StreamClosedError(f"stream {st.stream_id}: write after write_eof()/close()")
        if self._no_writes:
            raise self._writes_refused()
        size = len(data)
        if not size:
            return None
        if type(data) is not bytes:
            data = bytes(data)
            size = len(data)
        if not transport_ready or st.send_len or size > st.send_window or size > MAX_DATA_FRAME:
            st.send_buf.append(data)
            st.send_len += size
            if st.send_window:
                self.ready[st] = None
            return None
        st.send_window -= size
        header = pack_header(0, TYPE_DATA, 0, st.stream_id, size)
        out = self.control
        if out:
            self.control = []
        else:
            out = []
        if size <= _SMALL:
            out.append(header + data)
        else:
            out.append(header)
            out.append(data)
        return out

    def all_sent(self, st: StreamState) -> bool:
        """True once everything written on ``st`` was cut into frames (handed
        out by :meth:`take_output`).  Raises :class:`StreamResetError` after a
        RST, and the session's error if it ended with some of it unsent."""
        if st.phase == _RESET:
            raise self.reset_error(st)
        if not st.send_len:
            if st.unsent:
                raise self.closed_error()
            return True
        if self.closed:  # (the queues are emptied at the end: not reached)
            raise self.closed_error()
        return False

    @staticmethod
    def remote_ended(st: StreamState) -> bool:
        """The peer's FIN arrived and every byte before it was taken: a relay
        (``splice``) half-closes its other side now."""
        return st.phase in _REMOTELY_CLOSED and not st.recv_len

    def read(self, st: StreamState, max_bytes: int = -1) -> bytes:
        """Take up to ``max_bytes`` (all if < 0) buffered bytes; b'' if none."""
        buf = st.recv_buf
        if not buf:
            return b""
        total = st.recv_len
        if max_bytes < 0 or max_bytes >= total:
            if len(buf) == 1:
                data = buf.popleft()
                if type(data) is not bytes:
                    data = bytes(data)
            else:
                data = b"".join(buf)
                buf.clear()
            taken = total
        else:
            data = b"".join(self._pop_received(st, max_bytes))
            taken = max_bytes
        st.recv_len = total - taken
        if not st.recv_len:
            st.pinned = 0
        self._consume(st, taken)
        return data

    def take_received(self, st: StreamState, max_bytes: int = -1) -> list:
        """Like :meth:`read` but returns the buffered pieces (bytes/memoryviews)
        without joining them: for zero-copy forwarding."""
        buf = st.recv_buf
        if not buf:
            return []
        total = st.recv_len
        if max_bytes < 0 or max_bytes >= total:
            pieces = list(buf)
            buf.clear()
            taken = total
        else:
            pieces = self._pop_received(st, max_bytes)
            taken = max_bytes
        st.recv_len = total - taken
        if not st.recv_len:
            st.pinned = 0
        self._consume(st, taken)
        return pieces

    @staticmethod
    def _pop_received(st: StreamState, size: int) -> list:
        buf = st.recv_buf
        pieces = []
        while size:
            chunk = buf[0]
            clen = len(chunk)
            if clen <= size:
                pieces.append(buf.popleft())
                size -= clen
            else:
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                pieces.append(view[:size])
                buf[0] = view[size:]
                size = 0
        return pieces

    def _consume(self, st: StreamState, nbytes: int) -> None:
        """The application took ``nbytes``: advertise them once >= half the window."""
        consumed = st.consumed + nbytes
        if consumed >= self._update_threshold and st.phase in _PEER_OPEN and not (st.freed or self.closed):
            self.control.append(pack_header(0, TYPE_WINDOW_UPDATE, 0, st.stream_id, consumed))
            st.recv_window += consumed
            consumed = 0
        st.consumed = consumed

    def _send_fin(self, st: StreamState, out: list) -> None:
        out.append(pack_header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, st.stream_id, 0))
        st.fin_sent = True
        if st.phase == StreamPhase.CLOSED:
            self._free(st)

    def _drop_buffers(self, st: StreamState) -> None:
        st.recv_buf.clear()
        st.recv_len = 0
        st.pinned = 0
        st.send_buf.clear()
        st.send_len = 0
        self.ready.pop(st, None)

    def _free(self, st: StreamState) -> None:
        if st.freed:
            return
        st.freed = True
        if self.streams.get(st.stream_id) is st:
            del self.streams[st.stream_id]
        self.ready.pop(st, None)
        if self._close_deadlines:
            self._close_deadlines.pop(st, None)
        self._release_open_slot(st)
        self.events.append(StreamClosed(st))

    def _release_open_slot(self, st: StreamState) -> None:
        if st.counts_unacked:
            st.counts_unacked = False
            self._unacked_opens -= 1
            if self._unacked_opens == self._backlog - 1:
                self.events.append(OpenSlotAvailable())

    # ------------------------------------------------------- session control

    def ping(self, now: float | None = None) -> int:
        """Queue a ping; returns its opaque value (a :class:`PingAcked` event
        follows).  With ``now`` (seconds), a :class:`PingTimedOut` event
        comes from :meth:`handle_timer` instead if no reply arrives within
        ``connection_write_timeout``.  Raises the session's error once it
        has ended."""
        if self.closed:
            raise self.closed_error()
        opaque = self._send_ping()
        if now is not None:
            self._ping_deadlines[opaque] = now + self.config.connection_write_timeout
        return opaque

    def _send_ping(self) -> int:
        opaque = self._next_ping
        self._next_ping = (opaque + 1) & MAX_UINT32
        self.control.append(pack_header(0, TYPE_PING, FLAG_SYN, 0, opaque))
        return opaque

    # ---------------------------------------------------------------- timers

    def start_keepalive(self, now: float) -> None:
        """Start the keepalive (if ``config.enable_keepalive``): a ping every
        ``keepalive_interval`` seconds from ``now``; one unanswered within
        ``connection_write_timeout`` while nothing at all arrived from the
        peer ends the session with :class:`KeepAliveTimeoutError` (no Go
        Away).  hashicorp/yamux's ``keepalive`` (session.go), which pings
        ``interval`` after the previous reply; here it is ``interval`` after
        the previous ping was sent, and a peer busy sending (its reply stuck
        behind data) is not taken for dead."""
        if self.config.enable_keepalive and not self.closed and self._keepalive_at is None:
            self._keepalive_at = now + self.config.keepalive_interval

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (the clock of the
        ``now`` values passed in), or None when no timer is running."""
        if self.closed:
            return None
        when = self._keepalive_at
        if self._keepalive_ping is not None:
            when = self._keepalive_sent + self.config.connection_write_timeout
        for deadlines in (self._ping_deadlines, self._close_deadlines):
            if deadlines:  # all share one timeout: the first is the earliest
                first = next(iter(deadlines.values()))
                if when is None or first < when:
                    when = first
        return when

    def handle_timer(self, now: float) -> list:
        """Run what is due at ``now``; returns the events: :class:`PingTimedOut`
        for a ping without reply, :class:`StreamReset` (then
        :class:`StreamClosed`) for a closed stream the peer did not FIN within
        ``stream_close_timeout`` (RST sent, as hashicorp's
        ``closeTimeout``), :class:`ConnectionTerminated` with
        :class:`KeepAliveTimeoutError` on keepalive failure.  Calling it early
        does nothing."""
        if self.closed:
            return self.take_events()
        deadlines = self._ping_deadlines
        while deadlines:
            opaque, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            del deadlines[opaque]
            self.events.append(PingTimedOut(opaque))
        closing = self._close_deadlines
        while closing:
            st, deadline = next(iter(closing.items()))
            if deadline > now:
                break
            del closing[st]
            if not st.freed:
                self.events.append(StreamReset(st))
                self.reset_stream(st)
        if not self.closed:
            self._keepalive_timer(now)
        return self.take_events()

    def _keepalive_timer(self, now: float) -> None:
        interval = self.config.keepalive_interval
        if self._keepalive_ping is not None:
            timeout = self.config.connection_write_timeout
            if now < self._keepalive_sent + timeout:
                return
            self._keepalive_ping = None
            if self._received == self._keepalive_seen:
                self._terminate(KeepAliveTimeoutError(f"keepalive failed: no reply to a ping within {timeout} s"))
                return
            self._keepalive_at = now + interval  # the peer is sending: alive, its reply is behind data
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive_at = None
            self._keepalive_ping = self._send_ping()
            self._keepalive_sent = now
            self._keepalive_seen = self._received

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Send Go Away.  0: refuse new inbound streams from now on (existing
        ones go on).  Any other code ends the session (a local, clean end)."""
        if self.closed:
            return
        if not 0 <= code <= MAX_UINT32:
            raise ValueError(f"Go Away code out of range: {code}")
        if code == GO_AWAY_NORMAL:
            if not self.local_go_away:
                self.local_go_away = True
                self.go_away_sent = True
                self.control.append(pack_header(0, TYPE_GO_AWAY, 0, 0, code))
            return
        self.go_away_sent = True
        self.control.append(pack_header(0, TYPE_GO_AWAY, 0, 0, code))
        self._terminate(None)

    def begin_close(self) -> list:
        """Start a graceful close; returns the events.

        Go Away(0) is queued (unless one was sent), so the peer opens no more
        streams and its SYNs are refused with RST.  From now on
        :meth:`open_stream` and :meth:`send_data` raise
        :class:`SessionClosedError`; everything else goes on: the data the
        streams already queued, and FINs after it, are sent as the peer's
        windows allow (so the peer must go on reading), received data is
        still delivered, inbound streams already queued can still be
        accepted.  The session ends (:class:`ConnectionTerminated`, error
        None, ``unsent`` 0) as soon as no stream has anything left to send:
        at once if nothing is queued, else from the :meth:`take_output`,
        :meth:`receive_data` or :meth:`reset_stream` call that empties the
        last queue.  Streams that are still open are not FIN'd: the peer sees
        the session end.

        Not bounded here: the caller decides how long to wait and then calls
        :meth:`close`, which drops what is left.  Idempotent.
        """
        if not self.closing and not self.closed:
            self.closing = True
            self._no_writes = True
            self.local_go_away = True
            if not self.go_away_sent:
                self.go_away_sent = True
                self.control.append(pack_header(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
            self._end_if_drained()
        return self.take_events()

    def _end_if_drained(self) -> None:
        """Closing: end the session once no stream has data or a FIN left to send."""
        for st in self.streams.values():
            if st.send_len or st.fin_pending:
                return
        self._terminate(None)

    def _writes_refused(self) -> BaseException:
        if self.closed:
            return self.closed_error()
        return SessionClosedError("session is closing: no new writes")

    def closed_error(self) -> BaseException:
        """The exception for an operation on the ended session: a fresh copy of
        what ended it (:attr:`error`), or :class:`SessionClosedError` after a
        clean end."""
        if self.error is None:
            return SessionClosedError("session closed")
        return copy_error(self.error)

    @staticmethod
    def reset_error(st: StreamState) -> StreamResetError:
        """The exception for an operation on a reset stream (says who reset it)."""
        who = "the peer" if st.reset_by_peer else "us"
        return StreamResetError(f"stream {st.stream_id} was reset by {who}")

    def close(self) -> list:
        """End the session locally now: Go Away(0) (unless one was sent) and a
        :class:`ConnectionTerminated` with error None.  Data still queued on
        streams is dropped (counted in the event's ``unsent``); to send it
        first, use :meth:`begin_close`.  Returns the events."""
        if not self.closed:
            if not self.go_away_sent:
                self.go_away_sent = True
                self.control.append(pack_header(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
            self._terminate(None)
        return self.take_events()

    def abort(self, error: BaseException) -> list:
        """End the session with ``error`` and no Go Away (e.g. keepalive failure)."""
        self._terminate(error)
        return self.take_events()

    def _fail(self, error: ProtocolError) -> None:
        if not self.closed:
            self.go_away_sent = True
            self.control.append(pack_header(0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR))
            self._terminate(error)

    def _terminate(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._no_writes = True
        self.error = error
        self._keepalive_at = self._keepalive_ping = None
        self._ping_deadlines.clear()
        self._close_deadlines.clear()
        live = list(self.streams.values())
        self.streams.clear()
        self.ready.clear()
        self._partial = b""
        self._body_left = 0
        self._body_stream = None
        unsent = 0
        for st in live:
            if st.send_len:
                st.unsent = st.send_len
                unsent += st.send_len
                st.send_buf.clear()
                st.send_len = 0
            self._release_open_slot(st)
        self.events.append(ConnectionTerminated(error, live, unsent))

    # --------------------------------------------------------------- output

    @property
    def has_output(self) -> bool:
        return bool(self.control or self.ready)

    @property
    def has_pending_data(self) -> bool:
        """Data frames could be cut now (some stream has data and window)."""
        return bool(self.ready)

    def take_output(self, max_data: int = DEFAULT_OUTPUT_BUDGET) -> list:
        """The next bytes to send, as a list of buffers to write in order.

        All queued control frames first, then Data frames (round robin over the
        streams, each frame no larger than the stream's send window and
        ``MAX_DATA_FRAME``) until about ``max_data`` payload bytes.  With
        ``max_data=0`` only control frames are returned.
        """
        out = self.control
        self.control = []
        if self.ready and max_data > 0 and not self.closed:
            self._cut_data_frames(out, max_data)
            if self.closing:
                self._end_if_drained()
        return out

    def _cut_data_frames(self, out: list, budget: int) -> None:
        ready = self.ready
        while ready and budget > 0:
            st = next(iter(ready))
            del ready[st]
            size = st.send_window
            if size > MAX_DATA_FRAME:
                size = MAX_DATA_FRAME
            if size > st.send_len:
                size = st.send_len
            out.append(pack_header(0, TYPE_DATA, 0, st.stream_id, size))
            self._pop_send(st, size, out)
            st.send_window -= size
            st.send_len -= size
            budget -= size
            if st.send_len:
                if st.send_window:
                    ready[st] = None
            elif st.phase in _LOCALLY_CLOSED and not st.fin_sent:
                self._send_fin(st, out)

    def take_stream_output(self, st: StreamState) -> list:
        """Queued control frames, then Data frames cut from ``st``'s queue
        alone, as far as its send window allows (each at most
        ``MAX_DATA_FRAME``; its FIN after the last byte if one is pending):
        a list of buffers to write in order.

        For an I/O layer that promised to hand this stream's sendable bytes to
        the transport now, whatever other streams have queued and however
        full the transport is (``Stream.drain``).  Bytes beyond the send
        window stay queued."""
        out = self.control
        self.control = []
        if st.send_len and st.send_window and not (self.closed or st.phase == _RESET):
            while st.send_len and st.send_window:
                size = st.send_window
                if size > MAX_DATA_FRAME:
                    size = MAX_DATA_FRAME
                if size > st.send_len:
                    size = st.send_len
                out.append(pack_header(0, TYPE_DATA, 0, st.stream_id, size))
                self._pop_send(st, size, out)
                st.send_window -= size
                st.send_len -= size
            self.ready.pop(st, None)  # empty, or no window left
            if not st.send_len and st.fin_pending:
                self._send_fin(st, out)
            if self.closing:
                self._end_if_drained()
        return out

    @staticmethod
    def _pop_send(st: StreamState, size: int, out: list) -> None:
        buf = st.send_buf
        first = buf[0]
        if len(first) == size:  # the common case: one write, one frame
            out.append(buf.popleft())
            return
        pieces = []
        while size:
            chunk = buf[0]
            clen = len(chunk)
            if clen <= size:
                pieces.append(buf.popleft())
                size -= clen
            else:
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                pieces.append(view[:size])
                buf[0] = view[size:]
                size = 0
        if len(pieces) > _JOIN_PIECES:
            out.append(b"".join(pieces))
        else:
            out.extend(pieces)

    # ------------------------------------------------------------ inspection

    @property
    def unacked_opens(self) -> int:
        return self._unacked_opens

    def buffered_bytes(self) -> int:
        """Bytes held for the application across all live streams (receive side)."""
        return sum(st.recv_len for st in self.streams.values())
