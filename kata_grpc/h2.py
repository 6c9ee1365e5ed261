"""A sans-IO HTTP/2 client core for unary gRPC calls (RFC 9113, gRPC over HTTP/2).

Just what unary calls need (kata-shim's and kata-runtime's), and nothing that
does I/O: the caller feeds received bytes to :meth:`Connection.receive` and
writes what :meth:`Connection.data_to_send` returns.  Supported: the connection preface and
SETTINGS exchange, HEADERS/CONTINUATION (HPACK decode with Huffman and the
dynamic table), DATA with padding, flow control in both directions
(WINDOW_UPDATE), PING replies, RST_STREAM, GOAWAY.  Not supported (never needed
by a unary client): server push (disabled in our SETTINGS), priorities
(ignored), sending trailers, compression of gRPC messages.

A call is one stream: HEADERS with the method's fixed header block, then the
request as one length-prefixed gRPC message with END_STREAM.  The reply is
complete when the server ends the stream; :meth:`Call.result` gives the
response message or raises :class:`RpcError` with the gRPC status.
"""

from __future__ import annotations

from kata_grpc import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
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

# settings
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# error codes (RST_STREAM, GOAWAY)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1

# gRPC status codes
OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16

STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}
_RST_TO_GRPC = {REFUSED_STREAM: UNAVAILABLE, CANCEL: CANCELLED, ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED,
                INADEQUATE_SECURITY: PERMISSION_DENIED}


class H2Error(Exception):
    """The connection is unusable (the peer broke the protocol, or sent GOAWAY with an error)."""


class RpcError(Exception):
    """A call finished with a non-OK gRPC status."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.code, str(self.code))

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name


def frame(ftype: int, flags: int, stream_id: int, payload=b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + \
        stream_id.to_bytes(4, "big") + bytes(payload)


def request_headers(path: bytes, authority: bytes = b"localhost",
                    user_agent: bytes = b"kata-shim") -> bytes:
    """The header block of a gRPC call to ``path`` (e.g. b"/grpc.AgentService/WaitProcess")."""
    # 0x83 = indexed ":method: POST", 0x86 = indexed ":scheme: http" (static table).
    return b"\x83\x86" + hpack.encode_plain((
        (b":path", path),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", user_agent),
    ))


def grpc_message(payload) -> bytes:
    """Length-prefixed (uncompressed) gRPC message."""
    return b"".join((b"\x00", len(payload).to_bytes(4, "big"), payload))


def _percent_decode(text: bytes) -> str:
    if b"%" not in text:
        return text.decode("utf-8", "replace")
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == 0x25 and i + 2 < len(text):
            try:
                out.append(int(text[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(ch)
        i += 1
    return out.decode("utf-8", "replace")


class Call:
    """One unary call (one stream)."""

    __slots__ = ("stream_id", "pending", "send_window", "headers", "trailers", "body", "body_len",
                 "done", "reset", "refused", "recv_unacked")

    def __init__(self, stream_id: int, message, send_window: int, body: bytearray | None = None) -> None:
        self.stream_id = stream_id
        self.pending = memoryview(message)
        self.send_window = send_window
        self.headers: list | None = None
        self.trailers: list | None = None
        # The reply's DATA lands in body[:body_len]; body may be a buffer reused call after call.
        self.body = bytearray() if body is None else body
        self.body_len = 0
        self.done = False
        self.reset: int | None = None
        self.refused = False  # GOAWAY said the server never processed it: safe to retry
        self.recv_unacked = 0

    def space(self, n: int) -> memoryview:
        """Writable room for the next ``n`` bytes of the reply."""
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
        with self.space(len(data)) as room:
            room[:] = data
        self.body_len += len(data)

    def status(self) -> tuple[int, str]:
        """(gRPC status code, message) of a finished call."""
        if self.refused:
            return UNAVAILABLE, "stream refused (server going away)"
        if self.reset is not None and self.trailers is None:
            return _RST_TO_GRPC.get(self.reset, INTERNAL), f"stream reset by the server (HTTP/2 error {self.reset})"
        fields = self.trailers if self.trailers is not None else []
        code = message = None
        for name, value in fields:
            if name == b"grpc-status":
                code = value
            elif name == b"grpc-message":
                message = value
        if code is None:
            http = None
            for name, value in self.headers or ():
                if name == b":status":
                    http = value
            if http is not None and http != b"200":
                try:
                    return _HTTP_TO_GRPC.get(int(http), UNKNOWN), f"HTTP status {http.decode()}"
                except ValueError:
                    return UNKNOWN, "bad HTTP status"
            return INTERNAL, "response without grpc-status"
        try:
            status = int(code)
        except ValueError:
            return UNKNOWN, f"bad grpc-status {code!r}"
        return status, _percent_decode(message) if message else ""

    def result(self) -> memoryview:
        """The response message of a finished call; raises RpcError.

        The view points into the call's body buffer: when that buffer is reused for the
        next call (see Connection.request), use the reply before starting the next call."""
        code, message = self.status()
        if code != OK:
            raise RpcError(code, message)
        body, n = self.body, self.body_len
        if n < 5:
            raise RpcError(INTERNAL, "response without a message")
        if body[0] != 0:
            raise RpcError(INTERNAL, "compressed response message (not requested)")
        length = int.from_bytes(body[1:5], "big")
        if n != 5 + length:
            raise RpcError(INTERNAL, "response is not exactly one message")
        return memoryview(body)[5:n]


class Connection:
    """Client side of one HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, *, window: int = 4 << 20, max_frame: int = 1 << 20,
                 header_table_size: int = 4096, in_size: int = 64 << 10) -> None:
        self.window = window
        self.max_frame = max_frame
        self.decoder = hpack.Decoder(header_table_size)
        self.calls: dict[int, Call] = {}
        self.sending: list[Call] = []
        self.next_id = 1
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.conn_unacked = 0
        self.goaway_last_id: int | None = None
        self.closed_reason: str | None = None
        self._out = bytearray()   # small frames, copied
        self._segments: list = []  # what is ready to go, in order (large payloads by reference)
        # Received bytes not parsed yet live in _in[_rpos:_wpos].  DATA payloads are not kept
        # there: they go to their call's body as they arrive, straight from the socket when
        # nothing else is pending (see get_buffer), so a big frame never needs a big _in.
        self._in = bytearray(max(in_size, 1024))
        self._rpos = 0
        self._wpos = 0
        self._direct: Call | None = None  # get_buffer() handed out room in this call's body
        self._dleft = 0     # bytes (payload + padding) of the current DATA frame still to come
        self._dpad = 0      # of which trailing padding
        self._dcall: Call | None = None  # where the payload goes (None: dropped)
        self._dend = False  # the current DATA frame ends its stream
        self._cont: tuple[int, int, bytearray] | None = None  # header block awaiting CONTINUATION
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in ((ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, window),
                               (MAX_FRAME_SIZE, max_frame), (HEADER_TABLE_SIZE, header_table_size))
        )
        self._out += PREFACE + frame(SETTINGS, 0, 0, settings)
        if window > DEFAULT_WINDOW:
            self._out += frame(WINDOW_UPDATE, 0, 0, (window - DEFAULT_WINDOW).to_bytes(4, "big"))

    # ------------------------------------------------------------------ sending

    @property
    def usable(self) -> bool:
        """False once no new call may be started here (GOAWAY, error, stream ids used up)."""
        return self.closed_reason is None and self.goaway_last_id is None and self.next_id <= MAX_STREAM_ID

    def request(self, header_block: bytes, message, *, framed: bool = False,
                body: bytearray | None = None) -> Call:
        """Start a call.  ``framed``: ``message`` already carries the 5-byte gRPC prefix
        (it is then sent by reference, without a copy: keep it unchanged until the call ends).
        ``body``: a buffer to receive the reply into (reused between calls to spare
        allocations); its old content is overwritten."""
        if not self.usable:
            raise H2Error(self.closed_reason or "connection cannot start new streams")
        if len(header_block) > self.peer_max_frame:
            raise H2Error("request header block larger than a frame")
        sid = self.next_id
        self.next_id += 2
        call = Call(sid, message if framed else grpc_message(message), self.peer_initial_window, body)
        self.calls[sid] = call
        self._out += frame(HEADERS, END_HEADERS, sid, header_block)
        self.sending.append(call)
        self._flush_data()
        return call

    def _flush_data(self) -> None:
        still = []
        for call in self.sending:
            while call.pending:
                n = min(len(call.pending), call.send_window, self.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                chunk = call.pending[:n]
                call.pending = call.pending[n:]
                flags = 0 if call.pending else END_STREAM
                self._out += bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, DATA, flags))
                self._out += call.stream_id.to_bytes(4, "big")
                if n >= 4096:  # by reference: no copy of bulk payloads
                    self._segments.append(bytes(self._out))
                    self._out.clear()
                    self._segments.append(chunk)
                else:
                    self._out += chunk
                call.send_window -= n
                self.send_window -= n
            if call.pending and not call.done:
                still.append(call)
        self.sending = still

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

    def forget(self, call: Call) -> None:
        """Drop a finished (or abandoned) call."""
        self.calls.pop(call.stream_id, None)
        if call in self.sending:
            self.sending.remove(call)

    # ---------------------------------------------------------------- receiving

    def get_buffer(self) -> memoryview:
        """Writable room for the next received bytes (then call :meth:`buffer_updated`).

        In the middle of a DATA frame with nothing else pending, this is room in the
        call's reply buffer itself: the payload goes from the socket to its place with
        no copy in between.  Release the view before calling buffer_updated."""
        if self.closed_reason is not None:
            raise H2Error(self.closed_reason)
        if self._rpos == self._wpos:
            self._rpos = self._wpos = 0
            call = self._dcall
            payload = self._dleft - self._dpad
            if call is not None and payload > 0:
                self._direct = call
                return call.space(payload)
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
        """``n`` bytes were written into the last :meth:`get_buffer` view; process them."""
        if n <= 0:
            return
        call, self._direct = self._direct, None
        if call is not None:
            call.body_len += n
            self._dleft -= n
            if not self._dleft:
                self._data_done()
            return
        self._wpos += n
        self._parse()

    def receive(self, data) -> None:
        """Process received bytes (copying API; the shim itself uses get_buffer)."""
        view = memoryview(data)
        if not len(view) and self.closed_reason is not None:
            raise H2Error(self.closed_reason)
        while len(view):
            room = self.get_buffer()
            n = min(len(room), len(view))
            room[:n] = view[:n]
            room.release()
            view = view[n:]
            self.buffer_updated(n)

    def _parse(self) -> None:
        buf = self._in
        pos, end = self._rpos, self._wpos
        try:
            while pos < end:
                if self._dleft:  # the rest of a DATA frame
                    take = min(end - pos, self._dleft)
                    useful = min(take, self._dleft - self._dpad)
                    if useful > 0 and self._dcall is not None:
                        with memoryview(buf) as view:
                            self._dcall.append(view[pos:pos + useful])
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
        finally:
            self._rpos = pos

    def _fail(self, code: int, reason: str) -> None:
        self.closed_reason = f"HTTP/2 protocol error: {reason}"
        self._out += frame(GOAWAY, 0, 0, (self.next_id - 2 if self.next_id > 1 else 0).to_bytes(4, "big")
                           + code.to_bytes(4, "big"))
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
        # Flow control counts the whole frame, padding included, as soon as it is announced
        # (replies are consumed whole, so what is announced is as good as consumed).
        self.conn_unacked += length
        if self.conn_unacked >= self.window // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, self.conn_unacked.to_bytes(4, "big"))
            self.conn_unacked = 0
        call = self.calls.get(sid)
        if call is None or call.done:
            if sid >= self.next_id:
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            call = None  # a stream we dropped: counted above, its data ignored
        elif call.headers is None:
            self._fail(PROTOCOL_ERROR, "DATA before response headers")
        self._dcall = call
        self._dleft = remaining
        self._dpad = pad
        self._dend = bool(flags & END_STREAM)
        if call is not None and not self._dend:
            call.recv_unacked += length
            if call.recv_unacked >= self.window // 2:
                self._out += frame(WINDOW_UPDATE, 0, sid, call.recv_unacked.to_bytes(4, "big"))
                call.recv_unacked = 0

    def _data_done(self) -> None:
        call, self._dcall = self._dcall, None
        if call is not None and self._dend:
            self._finish(call)

    def _finish(self, call: Call) -> None:
        call.done = True
        call.pending = memoryview(b"")
        self.calls.pop(call.stream_id, None)

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._cont is not None and ftype != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "frame inside a header block")
        if ftype == HEADERS:
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
                self._on_header_block(sid, flags, fragment)
            else:
                self._cont = (sid, flags, bytearray(fragment))
        elif ftype == CONTINUATION:
            if self._cont is None or self._cont[0] != sid:
                self._fail(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._cont[2].extend(payload)
            if flags & END_HEADERS:
                csid, cflags, block = self._cont
                self._cont = None
                self._on_header_block(csid, cflags, block)
        elif ftype == SETTINGS:
            if sid != 0:
                self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
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
                    for call in self.calls.values():
                        call.send_window += delta
                elif key == MAX_FRAME_SIZE:
                    if not DEFAULT_MAX_FRAME <= value <= 0xFFFFFF:
                        self._fail(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                    self.peer_max_frame = value
                # HEADER_TABLE_SIZE concerns our encoder (no dynamic table used); the rest
                # (MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, ...) cannot affect one call at a time.
            self._out += frame(SETTINGS, ACK, 0)
            self._flush_data()
        elif ftype == PING:
            if sid != 0 or len(payload) != 8:
                self._fail(PROTOCOL_ERROR, "bad PING")
            if not flags & ACK:
                self._out += frame(PING, ACK, 0, payload)
        elif ftype == WINDOW_UPDATE:
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
                call = self.calls.get(sid)
                if call is not None:
                    call.send_window += increment
            self._flush_data()
        elif ftype == RST_STREAM:
            if len(payload) != 4 or sid == 0:
                self._fail(PROTOCOL_ERROR, "bad RST_STREAM")
            call = self.calls.get(sid)
            if call is not None:
                call.reset = int.from_bytes(payload, "big")
                self._finish(call)
        elif ftype == GOAWAY:
            if len(payload) < 8:
                self._fail(FRAME_SIZE_ERROR, "GOAWAY length")
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            code = int.from_bytes(payload[4:8], "big")
            self.goaway_last_id = last
            for call in list(self.calls.values()):
                if call.stream_id > last:
                    call.refused = True
                    self._finish(call)
            if code != NO_ERROR:
                debug = payload[8:].decode("utf-8", "replace")
                self.closed_reason = f"server sent GOAWAY (HTTP/2 error {code}{': ' + debug if debug else ''})"
        elif ftype == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        # PRIORITY and unknown frame types are ignored.

    def _on_header_block(self, sid: int, flags: int, block) -> None:
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as e:
            self._fail(COMPRESSION_ERROR, str(e))
        call = self.calls.get(sid)
        if call is None:
            if sid >= self.next_id:
                self._fail(PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")
            return
        if call.headers is None:
            call.headers = headers
            if flags & END_STREAM:
                call.trailers = headers  # trailers-only response
        else:
            call.trailers = headers
        if flags & END_STREAM:
            self._finish(call)
