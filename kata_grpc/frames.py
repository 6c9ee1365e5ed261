"""The HTTP/2 frame layer shared by the client core (:mod:`kata_grpc.h2`) and the server core
(:mod:`kata_grpc.server`): sans-IO, RFC 9113.

:class:`H2Connection` parses received bytes into frames and dispatches them by type, as the
``h2`` library does: the connection-level frames (SETTINGS, PING, WINDOW_UPDATE, GOAWAY,
RST_STREAM, PRIORITY, unknown types) are handled here; HEADERS (with padding, priority and
CONTINUATION, then HPACK) and DATA (with padding, straight into the stream's buffer) come to
the side's hooks (``_on_headers``, ``_data_stream``, ``_on_data_end``, ``_on_reset``,
``_on_goaway``).  Sending: header blocks split into HEADERS + CONTINUATION to the peer's
SETTINGS_MAX_FRAME_SIZE, and each sending stream's bytes cut into DATA frames within the
peer's windows (RFC 9113 section 6.9), large payloads by reference.

Receive flow control: a DATA frame is counted (padding included) when its header arrives, and
both windows are topped up once half of them is used: a side consumes a stream's message whole,
so what is announced is as good as consumed.  A broken rule of the protocol is a connection
error: :meth:`H2Connection._fail` queues GOAWAY with the error code and raises :class:`H2Error`.
"""

from __future__ import annotations

from kata_grpc import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 section 6)
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# settings (RFC 9113 section 6.5.2)
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# error codes (RST_STREAM, GOAWAY; RFC 9113 section 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1
#: the largest header block (all its HEADERS + CONTINUATION payloads) we accept, in bytes
MAX_HEADER_BLOCK = 256 << 10


class H2Error(Exception):
    """The connection is unusable (the peer broke the protocol, or sent GOAWAY with an error)."""


def frame(ftype: int, flags: int, stream_id: int, payload=b"") -> bytes:
    """One frame: the 9-byte header (length, type, flags, stream id) and ``payload``."""
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + \
        stream_id.to_bytes(4, "big") + bytes(payload)


def settings_payload(pairs) -> bytes:
    """SETTINGS payload of ``(identifier, value)`` pairs."""
    return b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in pairs)


class Stream:
    """What both sides keep of one stream: the bytes still to send and the received message.

    ``head`` then ``pending`` (a memoryview, sent by reference): the DATA payload not sent yet
    (``head``: a few bytes sent first, a gRPC message prefix, so that the message itself needs
    no copy); ``end_block``: a header block
    (trailers) to send after it with END_STREAM, or None (the last DATA frame ends the
    stream); received DATA lands in ``body[:body_len]`` (``body`` may be a buffer reused
    call after call)."""

    __slots__ = ("stream_id", "head", "pending", "send_window", "end_block", "body", "body_len", "done",
                 "recv_unacked")

    def __init__(self, stream_id: int, send_window: int, body: bytearray | None = None) -> None:
        self.stream_id = stream_id
        self.head = b""
        self.pending = memoryview(b"")
        self.send_window = send_window
        self.end_block: bytes | None = None
        self.body = bytearray() if body is None else body
        self.body_len = 0
        self.done = False
        self.recv_unacked = 0

    def space(self, n: int) -> memoryview:
        """Writable room for the next ``n`` received bytes (then add ``n`` to body_len)."""
        end = self.body_len + n
        if end > len(self.body):
            size = max(end, 2 * len(self.body), 4096)
            try:
                self.body.extend(bytes(size - len(self.body)))
            except BufferError:  # an old reply view still holds the buffer: take a new one
                body = bytearray(size)
                body[:self.body_len] = self.body[:self.body_len]
                self.body = body
        return memoryview(self.body)[self.body_len:end]

    def append(self, data) -> None:
        """Add received bytes to the body."""
        with self.space(len(data)) as room:
            room[:] = data
        self.body_len += len(data)


class H2Connection:
    """One HTTP/2 connection, either side: frame parsing and dispatch, connection-level frames,
    windows both ways.  Subclasses (client, server) implement the stream hooks.

    ``window``: our initial stream window and connection window (bytes); ``max_frame``: the
    largest frame we accept (SETTINGS_MAX_FRAME_SIZE); ``settings``: extra (id, value) pairs of
    our SETTINGS; ``client``: send the connection preface (else expect it from the peer)."""

    def __init__(self, *, client: bool, window: int, max_frame: int, header_table_size: int = 4096,
                 in_size: int = 64 << 10, settings=(), max_header_list_size: int | None = None) -> None:
        self.window = window
        self.max_frame = max_frame
        self.decoder = hpack.Decoder(header_table_size, max_list_size=max_header_list_size)
        self.streams: dict[int, Stream] = {}
        self.sending: list[Stream] = []
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_header_table_size = 4096
        self.peer_max_header_list: int | None = None
        self.peer_max_streams: int | None = None
        self.send_window = DEFAULT_WINDOW
        self.conn_unacked = 0
        self.closed_reason: str | None = None
        self.error_code: int | None = None  # of the GOAWAY we sent on a connection error
        self._size_update = b""  # an HPACK table size update due at the start of our next block
        self._out = bytearray()   # small frames, copied
        self._segments: list = []  # what is ready to go, in order (large payloads by reference)
        # Received bytes not parsed yet live in _in[_rpos:_wpos].  DATA payloads are not kept
        # there: they go to their stream's body as they arrive, straight from the socket when
        # nothing else is pending (see get_buffer), so a big frame never needs a big _in.
        self._in = bytearray(max(in_size, 1024))
        self._rpos = 0
        self._wpos = 0
        self._preface_due = not client  # a server first reads the client's preface
        self._settings_due = not client  # a client's first frame must be SETTINGS (RFC 9113 3.4)
        self._direct: Stream | None = None  # get_buffer() handed out room in this stream's body
        self._dleft = 0     # bytes (payload + padding) of the current DATA frame still to come
        self._dpad = 0      # of which trailing padding
        self._dstream: Stream | None = None  # where the payload goes (None: dropped)
        self._dsid = 0      # the current DATA frame's stream
        self._dend = False  # the current DATA frame ends its stream
        self._cont: tuple[int, int, bytearray] | None = None  # header block awaiting CONTINUATION
        self._dispatch = {
            HEADERS: self._on_headers_frame, CONTINUATION: self._on_continuation_frame,
            SETTINGS: self._on_settings_frame, PING: self._on_ping_frame,
            WINDOW_UPDATE: self._on_window_update_frame, RST_STREAM: self._on_rst_stream_frame,
            GOAWAY: self._on_goaway_frame, PUSH_PROMISE: self._on_push_promise_frame,
            PRIORITY: self._on_priority_frame,
        }
        ours = [(INITIAL_WINDOW_SIZE, window), (MAX_FRAME_SIZE, max_frame),
                (HEADER_TABLE_SIZE, header_table_size), *settings]
        if max_header_list_size is not None:
            ours.append((MAX_HEADER_LIST_SIZE, max_header_list_size))
        if client:
            self._out += PREFACE
        self._out += frame(SETTINGS, 0, 0, settings_payload(ours))
        if window > DEFAULT_WINDOW:
            self._out += frame(WINDOW_UPDATE, 0, 0, (window - DEFAULT_WINDOW).to_bytes(4, "big"))

    # ------------------------------------------------------------------ hooks

    def _last_stream_id(self) -> int:
        """The last-stream-id of a GOAWAY we send."""
        return 0

    def _on_headers(self, sid: int, flags: int, headers: list) -> None:
        """A decoded header block arrived on stream ``sid`` (``flags`` of its HEADERS frame)."""

    def _data_stream(self, sid: int, length: int, end: bool) -> Stream | None:
        """The stream a DATA frame's payload goes to (None: counted, then dropped)."""
        return None

    def _on_data_end(self, sid: int, stream: Stream | None, end: bool) -> None:
        """A DATA frame's payload is all in (``end``: it had END_STREAM)."""

    def _on_reset(self, sid: int, code: int) -> None:
        """The peer reset stream ``sid`` with error ``code``."""

    def _on_goaway(self, last: int, code: int, debug: bytes) -> None:
        """The peer sent GOAWAY."""

    def _sent_all(self, stream: Stream) -> None:
        """Everything queued on ``stream`` went out, END_STREAM included."""

    # ---------------------------------------------------------------- sending

    def output(self) -> list:
        """Everything ready to be written, as a list of buffers (for sendmsg); clears it."""
        if self._out:
            self._segments.append(bytes(self._out))
            self._out.clear()
        segments, self._segments = self._segments, []
        return segments

    def data_to_send(self) -> bytes:
        """Everything ready to be written, as one bytes object; clears it."""
        return b"".join(self.output())

    def _send_headers(self, sid: int, flags: int, block: bytes) -> None:
        """Queue a header block as HEADERS (+ CONTINUATION frames past the peer's max frame
        size; RFC 9113 section 6.10).  ``flags``: END_STREAM or 0."""
        if self._size_update:
            block = self._size_update + block
            self._size_update = b""
        size = self.peer_max_frame
        if len(block) <= size:
            self._out += frame(HEADERS, flags | END_HEADERS, sid, block)
            return
        self._out += frame(HEADERS, flags, sid, block[:size])
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            self._out += frame(CONTINUATION, END_HEADERS if last else 0, sid, block[start:start + size])

    def _flush_data(self) -> None:
        """Cut the sending streams' bytes into DATA frames as far as the windows allow."""
        still = []
        for stream in self.sending:
            while stream.pending or stream.head:
                head = stream.head
                total = len(head) + len(stream.pending)
                n = min(total, stream.send_window, self.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                flags = 0 if n < total or stream.end_block is not None else END_STREAM
                self._out += bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, DATA, flags))
                self._out += stream.stream_id.to_bytes(4, "big")
                rest = n
                if head:
                    self._out += head[:n]
                    stream.head = head[n:]
                    rest = max(0, n - len(head))
                chunk = stream.pending[:rest]
                stream.pending = stream.pending[rest:]
                if rest >= 4096:  # by reference: no copy of bulk payloads
                    self._segments.append(bytes(self._out))
                    self._out.clear()
                    self._segments.append(chunk)
                else:
                    self._out += chunk
                stream.send_window -= n
                self.send_window -= n
            if stream.done:
                continue
            if stream.pending or stream.head:
                still.append(stream)
                continue
            if stream.end_block is not None:
                block, stream.end_block = stream.end_block, None
                self._send_headers(stream.stream_id, END_STREAM, block)
            self._sent_all(stream)
        self.sending = still

    # ---------------------------------------------------------------- receiving

    def get_buffer(self) -> memoryview:
        """Writable room for the next received bytes (then call :meth:`buffer_updated`).

        In the middle of a DATA frame with nothing else pending, this is room in the
        stream's body buffer itself: the payload goes from the socket to its place with
        no copy in between.  Release the view before calling buffer_updated.
        Raises H2Error once the connection failed."""
        if self.closed_reason is not None:
            raise H2Error(self.closed_reason)
        if self._rpos == self._wpos:
            self._rpos = self._wpos = 0
            stream = self._dstream
            payload = self._dleft - self._dpad
            if stream is not None and payload > 0:
                self._direct = stream
                return stream.space(payload)
        elif self._rpos and len(self._in) - self._wpos < 4096:
            # compact: move the unparsed tail to the front
            tail = self._wpos - self._rpos
            self._in[:tail] = self._in[self._rpos:self._wpos]
            self._rpos, self._wpos = 0, tail
        self._direct = None
        if self._wpos == len(self._in):  # a whole non-DATA frame that does not fit: grow
            self._in.extend(bytes(len(self._in)))
        return memoryview(self._in)[self._wpos:]

    def buffer_updated(self, n: int) -> None:
        """``n`` bytes were written into the last :meth:`get_buffer` view; process them.
        Raises H2Error on a connection error (GOAWAY is then queued)."""
        if n <= 0:
            return
        stream, self._direct = self._direct, None
        if stream is not None:
            stream.body_len += n
            self._dleft -= n
            if not self._dleft:
                self._data_done()
            return
        self._wpos += n
        self._parse()

    def receive_bytes(self, data) -> None:
        """Process received bytes (the copying API).  Raises H2Error on a connection error,
        and on any call once the connection failed.

        With nothing buffered (the usual case: a chunk of whole frames, a request), the
        frames are parsed in ``data`` itself and only an incomplete last frame is copied in."""
        view = memoryview(data)
        if not len(view) and self.closed_reason is not None:
            raise H2Error(self.closed_reason)
        if self._rpos == self._wpos and not self._dleft and len(view) and self.closed_reason is None:
            self._rpos = self._wpos = 0
            # bytes index faster than a memoryview (no format to look at)
            pos = self._parse_frames(data if type(data) in (bytes, bytearray) else view, 0, len(view))
            rest = len(view) - pos
            if rest:
                if rest > len(self._in):
                    self._in.extend(bytes(rest - len(self._in)))
                self._in[:rest] = view[pos:]
                self._wpos = rest
            return
        while len(view):
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            room.release()
            view = view[n:]
            self.buffer_updated(n)

    def _parse(self) -> None:
        self._rpos = self._parse_frames(self._in, self._rpos, self._wpos)

    def _parse_frames(self, buf, pos: int, end: int) -> int:
        """Process the frames in ``buf[pos:end]``; the position of the first byte not consumed
        (an incomplete frame).  On H2Error (raised by a handler) the connection is over."""
        if self._preface_due:
            if end - pos < len(PREFACE):
                if bytes(buf[pos:end]) != PREFACE[:end - pos]:
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return pos
            if bytes(buf[pos:pos + len(PREFACE)]) != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            pos += len(PREFACE)
            self._preface_due = False
        while pos < end:
            if self._dleft:  # the rest of a DATA frame
                take = min(end - pos, self._dleft)
                useful = min(take, self._dleft - self._dpad)
                if useful > 0 and self._dstream is not None:
                    with memoryview(buf) as view:
                        self._dstream.append(view[pos:pos + useful])
                pos += take
                self._dleft -= take
                if not self._dleft:
                    self._data_done()
                continue
            if end - pos < 9:
                break
            length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
            if length > self.max_frame:
                self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes (limit {self.max_frame})")
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            if self._settings_due:
                if ftype != SETTINGS or flags & ACK:
                    self._fail(PROTOCOL_ERROR, "the peer's first frame is not SETTINGS")
                self._settings_due = False
            if ftype == DATA:
                padded = flags & PADDED
                if padded and end - pos < 10:
                    break  # wait for the pad length
                self._on_data_header(flags, sid, length, buf[pos + 9] if padded else 0)
                pos += 10 if padded else 9
                if not self._dleft:
                    self._data_done()
                continue
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self._on_frame(ftype, flags, sid, payload)
        return pos

    def _fail(self, code: int, reason: str) -> None:
        """Connection error (RFC 9113 section 5.4.1): queue GOAWAY ``code``, raise H2Error."""
        self.closed_reason = f"HTTP/2 protocol error: {reason}"
        self.error_code = code
        self._out += frame(GOAWAY, 0, 0, self._last_stream_id().to_bytes(4, "big") + code.to_bytes(4, "big")
                           + reason.encode("utf-8", "replace")[:256])
        raise H2Error(self.closed_reason)

    def _on_data_header(self, flags: int, sid: int, length: int, pad: int) -> None:
        if self._cont is not None:
            self._fail(PROTOCOL_ERROR, "DATA inside a header block")
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        remaining = length
        if flags & PADDED:
            if length < 1 or pad >= length:
                self._fail(PROTOCOL_ERROR, "bad DATA padding")
            remaining = length - 1  # the pad length byte is consumed with the header
        self.conn_unacked += length
        if self.conn_unacked >= self.window // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, self.conn_unacked.to_bytes(4, "big"))
            self.conn_unacked = 0
        end = bool(flags & END_STREAM)
        stream = self._data_stream(sid, remaining - pad, end)
        self._dstream = stream
        self._dsid = sid
        self._dleft = remaining
        self._dpad = pad
        self._dend = end
        if stream is not None and not end:
            stream.recv_unacked += length
            if stream.recv_unacked >= self.window // 2:
                self._out += frame(WINDOW_UPDATE, 0, sid, stream.recv_unacked.to_bytes(4, "big"))
                stream.recv_unacked = 0

    def _data_done(self) -> None:
        stream, self._dstream = self._dstream, None
        self._on_data_end(self._dsid, stream, self._dend)

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._cont is not None and ftype != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "frame inside a header block")
        handler = self._dispatch.get(ftype)
        if handler is not None:  # unknown frame types are ignored (RFC 9113 section 4.1)
            handler(flags, sid, payload)

    def _on_headers_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        pos, stop = 0, len(payload)
        if flags & PADDED:
            if stop < 1 or payload[0] >= stop:
                self._fail(PROTOCOL_ERROR, "bad HEADERS padding")
            stop -= payload[0]
            pos = 1
        if flags & PRIORITY_FLAG:
            pos += 5
        if pos > stop:
            self._fail(PROTOCOL_ERROR, "short HEADERS frame")
        fragment = payload[pos:stop]
        if flags & END_HEADERS:
            self._header_block(sid, flags, fragment)
        else:
            self._cont = (sid, flags, bytearray(fragment))

    def _on_continuation_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if self._cont is None or self._cont[0] != sid:
            self._fail(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self._cont[2]
        block.extend(payload)
        if len(block) > MAX_HEADER_BLOCK:
            self._fail(ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_BLOCK} bytes")
        if flags & END_HEADERS:
            csid, cflags, _ = self._cont
            self._cont = None
            self._header_block(csid, cflags, block)

    def _header_block(self, sid: int, flags: int, block) -> None:
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as e:
            self._fail(COMPRESSION_ERROR, str(e))
        self._on_headers(sid, flags, headers)

    def _on_settings_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS length")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 0xFFFFFF:
                    self._fail(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH:
                if value > 1:
                    self._fail(PROTOCOL_ERROR, "bad ENABLE_PUSH")
            elif key == HEADER_TABLE_SIZE:
                # Our encoder never adds to its dynamic table (RFC 7541 section 4.2): a size
                # below the 4096 we started with is acknowledged by a size update to 0.
                if value < 4096 and self.peer_header_table_size >= 4096:
                    self._size_update = b"\x20"
                self.peer_header_table_size = value
            elif key == MAX_HEADER_LIST_SIZE:
                self.peer_max_header_list = value
            elif key == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            # unknown settings are ignored (RFC 9113 section 6.5.2)
        self._out += frame(SETTINGS, ACK, 0)
        self._flush_data()

    def _on_ping_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0 or len(payload) != 8:
            self._fail(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "bad PING")
        if not flags & ACK:
            self._out += frame(PING, ACK, 0, payload)

    def _on_window_update_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                self._fail(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.send_window += increment
        if self.sending:
            self._flush_data()

    def _on_rst_stream_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4 or sid == 0:
            self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "bad RST_STREAM")
        self._on_reset(sid, int.from_bytes(payload, "big"))

    def _on_goaway_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            self._fail(FRAME_SIZE_ERROR, "GOAWAY length")
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        self._on_goaway(last, int.from_bytes(payload[4:8], "big"), payload[8:])

    def _on_push_promise_frame(self, flags: int, sid: int, payload: bytes) -> None:
        self._fail(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")

    def _on_priority_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._fail(FRAME_SIZE_ERROR, "PRIORITY length")
        # priorities are ignored
