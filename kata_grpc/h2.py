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

The frame layer (parsing, dispatch by frame type, the connection-level frames, windows) is
:mod:`kata_grpc.frames`, shared with the server core; the gRPC level (status codes, framing,
grpc-message) is :mod:`kata_grpc.protocol`.  Their names stay importable from here, where
kata-shim and kata-runtime import them.
"""

from __future__ import annotations

from kata_grpc import hpack
from kata_grpc.frames import (  # noqa: F401  (kept importable from here for the shim and runtime)
    ACK, CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, ENABLE_PUSH,
    END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, HEADER_TABLE_SIZE,
    HEADERS, INADEQUATE_SECURITY, INITIAL_WINDOW_SIZE, INTERNAL_ERROR, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE, MAX_STREAM_ID, MAX_WINDOW, NO_ERROR, PADDED, PING, PREFACE, PRIORITY, PRIORITY_FLAG,
    PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM, RST_STREAM, SETTINGS, WINDOW_UPDATE, H2Connection, H2Error,
    Stream, frame)
from kata_grpc.protocol import (  # noqa: F401  (kept importable from here)
    ABORTED, ALREADY_EXISTS, CANCELLED, DATA_LOSS, DEADLINE_EXCEEDED, FAILED_PRECONDITION, INTERNAL,
    INVALID_ARGUMENT, NOT_FOUND, OK, OUT_OF_RANGE, PERMISSION_DENIED, RESOURCE_EXHAUSTED, STATUS_NAMES,
    UNAUTHENTICATED, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN, RpcError, grpc_message, percent_decode)

# gRPC PROTOCOL-HTTP2.md / http-grpc-status-mapping.md: a reply without grpc-status
_HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
                 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}
_RST_TO_GRPC = {REFUSED_STREAM: UNAVAILABLE, CANCEL: CANCELLED, ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED,
                INADEQUATE_SECURITY: PERMISSION_DENIED}


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


class Call(Stream):
    """One unary call (one stream): the request still to send, the reply as it arrives."""

    __slots__ = ("headers", "trailers", "reset", "refused")

    def __init__(self, stream_id: int, message, send_window: int, body: bytearray | None = None) -> None:
        super().__init__(stream_id, send_window, body)
        self.pending = memoryview(message)
        self.headers: list | None = None
        self.trailers: list | None = None
        self.reset: int | None = None
        self.refused = False  # GOAWAY said the server never processed it: safe to retry

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
        return status, percent_decode(message) if message else ""

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


class Connection(H2Connection):
    """Client side of one HTTP/2 connection carrying unary gRPC calls.

    ``window``: our stream and connection windows (bytes); ``max_frame``: the largest frame
    we accept; ``in_size``: the initial input buffer (bytes)."""

    def __init__(self, *, window: int = 4 << 20, max_frame: int = 1 << 20,
                 header_table_size: int = 4096, in_size: int = 64 << 10) -> None:
        super().__init__(client=True, window=window, max_frame=max_frame, header_table_size=header_table_size,
                         in_size=in_size, settings=((ENABLE_PUSH, 0),))
        self.calls = self.streams
        self.next_id = 1
        self.goaway_last_id: int | None = None

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
        allocations); its old content is overwritten.  Raises H2Error when the connection
        cannot start a stream."""
        if not self.usable:
            raise H2Error(self.closed_reason or "connection cannot start new streams")
        sid = self.next_id
        self.next_id += 2
        call = Call(sid, message if framed else grpc_message(message), self.peer_initial_window, body)
        self.calls[sid] = call
        self._send_headers(sid, 0, header_block)
        self.sending.append(call)
        self._flush_data()
        return call

    def forget(self, call: Call) -> None:
        """Drop a finished (or abandoned) call."""
        self.calls.pop(call.stream_id, None)
        if call in self.sending:
            self.sending.remove(call)

    # ---------------------------------------------------------------- receiving

    def receive(self, data) -> None:
        """Process received bytes (copying API; the shim itself uses get_buffer).
        Raises H2Error on a connection error."""
        self.receive_bytes(data)

    def _last_stream_id(self) -> int:
        return self.next_id - 2 if self.next_id > 1 else 0

    def _finish(self, call: Call) -> None:
        call.done = True
        call.pending = memoryview(b"")
        self.calls.pop(call.stream_id, None)

    def _data_stream(self, sid: int, length: int, end: bool) -> Call | None:
        call = self.calls.get(sid)
        if call is None or call.done:
            if sid >= self.next_id:
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return None  # a stream we dropped: counted, its data ignored
        if call.headers is None:
            self._fail(PROTOCOL_ERROR, "DATA before response headers")
        return call

    def _on_data_end(self, sid: int, call: Call | None, end: bool) -> None:
        if call is not None and end:
            self._finish(call)

    def _on_headers(self, sid: int, flags: int, headers: list) -> None:
        call = self.calls.get(sid)
        if call is None:
            if sid >= self.next_id or not sid & 1:
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

    def _on_reset(self, sid: int, code: int) -> None:
        call = self.calls.get(sid)
        if call is not None:
            call.reset = code
            self._finish(call)

    def _on_goaway(self, last: int, code: int, debug: bytes) -> None:
        self.goaway_last_id = last
        for call in list(self.calls.values()):
            if call.stream_id > last:
                call.refused = True
                self._finish(call)
        if code != NO_ERROR:
            text = debug.decode("utf-8", "replace")
            self.closed_reason = f"server sent GOAWAY (HTTP/2 error {code}{': ' + text if text else ''})"
