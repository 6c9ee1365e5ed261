"""A sans-IO server core for unary gRPC calls over one HTTP/2 connection (RFC 9113,
gRPC PROTOCOL-HTTP2.md).

No I/O and no threads: feed received bytes to :meth:`ServerConnection.receive`, which returns
events; answer requests with :meth:`ServerConnection.respond` or
:meth:`ServerConnection.respond_error`; write what :meth:`ServerConnection.data_to_send`
(or :meth:`ServerConnection.output`) returns after every call.  :mod:`kata_grpc.aio` is the
asyncio skin.

Events::

    RequestReceived(stream_id, path, message, timeout, headers)
        a whole request: ``path`` (str, e.g. "/grpc.Health/Check"), ``message`` (bytes, the
        serialized request), ``timeout`` (seconds from grpc-timeout, or None)
    StreamReset(stream_id, error_code)
        the client reset (cancelled) a stream whose request was delivered and not fully answered
    ConnectionEnded(reason, error_code, graceful)
        no request will come any more: ``graceful`` (the client's GOAWAY NO_ERROR): the calls
        in flight may still be answered; otherwise the connection is broken (our GOAWAY with
        PROTOCOL_ERROR / COMPRESSION_ERROR / ... is queued, or the client sent one with an error)

What the core answers by itself, without an event: an unknown :path (UNIMPLEMENTED, when
``paths`` is given), a request message over ``max_message`` (RESOURCE_EXHAUSTED), a compressed
message (INTERNAL: no grpc-encoding is negotiated), a request that is not exactly one message
(INTERNAL), a bad grpc-timeout (INTERNAL), a content-type other than application/grpc (HTTP
415), a malformed header list (RST_STREAM PROTOCOL_ERROR), streams beyond our
SETTINGS_MAX_CONCURRENT_STREAMS (RST_STREAM REFUSED_STREAM).  An answer sent before the
client ended its side is followed by RST_STREAM NO_ERROR (RFC 9113 section 8.1).

Flow control both ways: request DATA is acknowledged (WINDOW_UPDATE) as it arrives, each
stream's body bounded by ``max_message``; responses go out within the client's connection and
stream windows and its SETTINGS_MAX_FRAME_SIZE.  Our encoder never uses the HPACK dynamic
table, so any SETTINGS_HEADER_TABLE_SIZE of the client is honoured.
"""

from __future__ import annotations

from kata_grpc import hpack
from kata_grpc.frames import (DATA, END_HEADERS, END_STREAM, HEADERS, MAX_CONCURRENT_STREAMS, NO_ERROR,
                              PROTOCOL_ERROR, REFUSED_STREAM, RST_STREAM, STREAM_CLOSED, GOAWAY, H2Connection,
                              H2Error, Stream, frame)
from kata_grpc.protocol import (INTERNAL, OK, PREFIX_LEN, RESOURCE_EXHAUSTED, UNIMPLEMENTED,
                                message_length, parse_timeout, percent_encode)

#: the largest request or response message, bytes (as kata-agent's grpc.aio server had it)
MAX_MESSAGE = 64 << 20
#: the header list size we accept (SETTINGS_MAX_HEADER_LIST_SIZE), bytes
MAX_HEADER_LIST = 16 << 10
#: grpc-message is cut to this many encoded bytes when the client announced no smaller limit
MAX_STATUS_MESSAGE = 4 << 10

_RESPONSE_HEADERS = b"\x88" + hpack.encode_plain(((b"content-type", b"application/grpc"),))  # :status 200
_TRAILERS_OK = hpack.encode_plain(((b"grpc-status", b"0"),))
#: The first 5 bytes (length, type, flags) of the HEADERS frames of an OK answer; the stream id follows.
_RESPONSE_HEADERS_HEAD = len(_RESPONSE_HEADERS).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS))
_TRAILERS_OK_HEAD = len(_TRAILERS_OK).to_bytes(3, "big") + bytes((HEADERS, END_HEADERS | END_STREAM))
_DATA_NO_FLAGS = bytes((DATA, 0))
#: An answer up to this size (prefix + message, bytes) that fits the windows goes out as three whole
#: frames at once (`_queue_small_answer`); a larger one is cut by _flush_data and sent by reference.
SMALL_ANSWER = 4096


class RequestReceived:
    """A complete unary request on ``stream_id``: ``path`` (str), ``message`` (bytes),
    ``timeout`` (seconds, or None), ``headers`` (the request's (name, value) list)."""

    __slots__ = ("stream_id", "path", "message", "timeout", "headers")

    def __init__(self, stream_id: int, path: str, message: bytes, timeout: float | None, headers: list) -> None:
        self.stream_id = stream_id
        self.path = path
        self.message = message
        self.timeout = timeout
        self.headers = headers

    def __repr__(self) -> str:
        return f"<RequestReceived {self.stream_id} {self.path} {len(self.message)} bytes timeout={self.timeout}>"


class StreamReset:
    """The client reset stream ``stream_id`` (HTTP/2 ``error_code``, CANCEL when it cancels a
    call) after its request was delivered: the answer is not wanted any more."""

    __slots__ = ("stream_id", "error_code")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code

    def __repr__(self) -> str:
        return f"<StreamReset {self.stream_id} error {self.error_code}>"


class ConnectionEnded:
    """No request will come on this connection any more (see the module docstring):
    ``reason`` (str), ``error_code`` (HTTP/2), ``graceful`` (calls in flight may be answered)."""

    __slots__ = ("reason", "error_code", "graceful")

    def __init__(self, reason: str, error_code: int, graceful: bool) -> None:
        self.reason = reason
        self.error_code = error_code
        self.graceful = graceful

    def __repr__(self) -> str:
        return f"<ConnectionEnded {self.reason!r} error {self.error_code} graceful={self.graceful}>"


class ServerStream(Stream):
    """One call on the server: its request headers and body, whether each side has ended."""

    __slots__ = ("path", "headers", "timeout", "remote_closed", "answered", "delivered", "checked")

    def __init__(self, stream_id: int, send_window: int) -> None:
        super().__init__(stream_id, send_window)
        self.path = ""
        self.headers: list = []
        self.timeout: float | None = None
        self.remote_closed = False  # the client's END_STREAM arrived
        self.answered = False       # our response is queued (its last frame may wait for windows)
        self.delivered = False      # RequestReceived was returned
        self.checked = False        # the message prefix was checked


class ServerConnection(H2Connection):
    """Server side of one HTTP/2 connection serving unary gRPC calls (sans-IO).

    ``paths``: the served :path values (a container of str; None: every path is delivered);
    ``max_message``: the largest request/response message, bytes; ``window``: our stream and
    connection receive windows, bytes; ``max_frame``: our SETTINGS_MAX_FRAME_SIZE;
    ``max_streams``: our SETTINGS_MAX_CONCURRENT_STREAMS."""

    def __init__(self, paths=None, *, max_message: int = MAX_MESSAGE, window: int = 4 << 20,
                 max_frame: int = 1 << 20, max_streams: int = 1000, in_size: int = 64 << 10) -> None:
        super().__init__(client=False, window=window, max_frame=max_frame, in_size=in_size,
                         settings=((MAX_CONCURRENT_STREAMS, max_streams),), max_header_list_size=MAX_HEADER_LIST)
        self.paths = paths
        self.max_message = max_message
        self.max_streams = max_streams
        self.last_client_id = 0     # the highest stream id the client opened
        self.goaway_sent = False
        self.ended = False          # ConnectionEnded was returned
        # the header list of the last request that passed _open, and its (path, timeout): a
        # client repeats its headers call after call, so an equal list passes again unread
        self._accepted: tuple[list, str, float | None] | None = None
        self._events: list = []

    # ---------------------------------------------------------------- the API

    def receive(self, data) -> list:
        """Process received bytes (b"" at EOF is not needed: tell the skin); returns the events
        they complete, in order.  A connection error gives a ConnectionEnded event (GOAWAY
        queued) instead of raising; after it, further bytes are ignored."""
        if self.closed_reason is not None:
            return []
        try:
            self.receive_bytes(data)
        except H2Error:
            self.goaway_sent = True
            self._end(self.closed_reason or "connection error", self.error_code or PROTOCOL_ERROR, False)
        events, self._events = self._events, []
        return events

    def respond(self, stream_id: int, message) -> bool:
        """Queue the OK answer to ``stream_id``: HEADERS (:status 200, content-type
        application/grpc), ``message`` (bytes-like, serialized; sent by reference, so keep it
        unchanged until it is out) as one gRPC message in DATA frames within the client's
        windows, trailers (grpc-status 0).  A message over
        ``max_message`` is answered RESOURCE_EXHAUSTED instead.  Returns False (nothing queued)
        when the stream is gone (reset, or already answered)."""
        stream = self._answerable(stream_id)
        if stream is None:
            return False
        if len(message) > self.max_message:
            return self.respond_error(stream_id, RESOURCE_EXHAUSTED,
                                      f"response message of {len(message)} bytes (limit {self.max_message})")
        stream.answered = True
        if self._queue_small_answer(stream, message):
            return True
        self._send_headers(stream_id, 0, _RESPONSE_HEADERS)
        stream.head = b"\x00" + len(message).to_bytes(4, "big")  # the gRPC message prefix
        stream.pending = memoryview(message)
        stream.end_block = _TRAILERS_OK
        self.sending.append(stream)
        self._flush_data()
        return True

    def _queue_small_answer(self, stream: ServerStream, message) -> bool:
        """Queue HEADERS, one DATA frame with the whole message and the trailers, when the
        answer is small, fits both windows and one frame, and nothing else waits to be sent
        (the frames _flush_data would make, without cutting); False otherwise."""
        n = PREFIX_LEN + len(message)
        if (n > SMALL_ANSWER or self.sending or self._size_update or n > stream.send_window
                or n > self.send_window or n > self.peer_max_frame):
            return False
        sid = stream.stream_id.to_bytes(4, "big")
        self._out += b"".join((_RESPONSE_HEADERS_HEAD, sid, _RESPONSE_HEADERS,
                               n.to_bytes(3, "big"), _DATA_NO_FLAGS, sid, b"\x00", len(message).to_bytes(4, "big"), message,
                               _TRAILERS_OK_HEAD, sid, _TRAILERS_OK))
        stream.send_window -= n
        self.send_window -= n
        self._sent_all(stream)
        return True

    def respond_error(self, stream_id: int, code: int, message: str = "") -> bool:
        """Queue a trailers-only answer to ``stream_id``: one HEADERS with END_STREAM carrying
        :status 200, content-type, grpc-status ``code`` (int, non-OK) and grpc-message
        ``message`` (percent-encoded, cut to the client's header list limit).  Returns False
        when the stream is gone."""
        if code == OK:
            raise ValueError("respond_error needs a non-OK status code")
        stream = self._answerable(stream_id)
        if stream is None:
            return False
        stream.answered = True
        self._send_headers(stream_id, END_STREAM, self._status_block(code, message))
        self._sent_all(stream)
        return True

    def close(self, error_code: int = NO_ERROR, reason: str = "") -> None:
        """Queue GOAWAY: no new call is accepted (the last stream id is the last one opened);
        the calls in flight may still be answered (RFC 9113 section 6.8)."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self._out += frame(GOAWAY, 0, 0, self.last_client_id.to_bytes(4, "big") + error_code.to_bytes(4, "big")
                           + reason.encode("utf-8", "replace")[:256])

    @property
    def open_streams(self) -> int:
        """How many streams are not finished (a request coming in, or an answer going out)."""
        return len(self.streams)

    # ---------------------------------------------------------------- answering

    def _answerable(self, stream_id: int) -> ServerStream | None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.answered or stream.done or self.closed_reason is not None:
            return None
        return stream

    def _status_block(self, code: int, message: str) -> bytes:
        fields = [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code)]
        if message:
            limit = MAX_STATUS_MESSAGE
            if self.peer_max_header_list is not None:
                limit = max(0, min(limit, self.peer_max_header_list - 256))
            text = percent_encode(message)
            if len(text) > limit:
                cut = text[:limit]
                pct = cut.rfind(b"%", max(0, len(cut) - 2))
                text = cut[:pct] if pct >= 0 else cut  # never half an escape
            if text:
                fields.append((b"grpc-message", text))
        return b"\x88" + hpack.encode_plain(fields)

    def _refuse(self, stream: ServerStream, code: int, message: str) -> None:
        """Answer ``stream`` ourselves (no event), before or after the request is complete."""
        stream.answered = True
        self._send_headers(stream.stream_id, END_STREAM, self._status_block(code, message))
        self._sent_all(stream)

    def _sent_all(self, stream: ServerStream) -> None:
        stream.done = True
        stream.body = bytearray()
        if not stream.remote_closed:
            # the answer is complete: the rest of the request is not wanted (RFC 9113 8.1)
            self._out += frame(RST_STREAM, 0, stream.stream_id, NO_ERROR.to_bytes(4, "big"))
        self.streams.pop(stream.stream_id, None)

    def _end(self, reason: str, error_code: int, graceful: bool) -> None:
        if not self.ended:
            self.ended = True
            self._events.append(ConnectionEnded(reason, error_code, graceful))

    def _last_stream_id(self) -> int:
        return self.last_client_id

    # ---------------------------------------------------------------- receiving

    def _on_headers(self, sid: int, flags: int, headers: list) -> None:
        if not sid & 1:
            self._fail(PROTOCOL_ERROR, f"HEADERS on even stream {sid} (server-initiated)")
        stream = self.streams.get(sid)
        if stream is not None:  # trailers of the request
            if stream.remote_closed or not flags & END_STREAM:
                self._fail(PROTOCOL_ERROR, f"second header block on stream {sid} without END_STREAM")
            self._request_done(stream)
            return
        if sid <= self.last_client_id:
            return  # a stream we closed (answered early, or reset): frames in flight are ignored
        self.last_client_id = sid
        if self.goaway_sent:
            return  # above the last stream id of our GOAWAY: never processed
        if len(self.streams) >= self.max_streams:
            self._out += frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big"))
            return
        stream = ServerStream(sid, self.peer_initial_window)
        self.streams[sid] = stream
        stream.remote_closed = bool(flags & END_STREAM)
        self._open(stream, headers)
        if stream.remote_closed and not stream.answered:
            self._request_done(stream)

    def _open(self, stream: ServerStream, headers: list) -> None:
        """Check a request's header list (RFC 9113 section 8.3.1, PROTOCOL-HTTP2.md)."""
        stream.headers = headers
        accepted = self._accepted
        if accepted is not None and accepted[0] == headers and (self.paths is None or accepted[1] in self.paths):
            stream.path, stream.timeout = accepted[1], accepted[2]
            return None
        method = content_type = None
        regular = False
        for name, value in headers:
            if name[:1] == b":":
                if regular:
                    return self._malformed(stream, "pseudo-header after a regular header")
                if name == b":path":
                    stream.path = value.decode("utf-8", "replace")
                elif name == b":method":
                    method = value
                elif name not in (b":scheme", b":authority"):
                    return self._malformed(stream, f"pseudo-header {name!r} in a request")
            else:
                regular = True
                if name == b"content-type":
                    content_type = value
                elif name == b"grpc-timeout":
                    try:
                        stream.timeout = parse_timeout(value)
                    except ValueError as e:
                        return self._refuse(stream, INTERNAL, str(e))
                elif name == b"grpc-encoding" and value != b"identity":
                    return self._refuse(stream, UNIMPLEMENTED, f"grpc-encoding {value.decode('latin-1')} not supported")
                elif name == b"te" and value != b"trailers":
                    return self._malformed(stream, "te other than trailers")
                elif name.lower() != name or name in (b"connection", b"transfer-encoding", b"keep-alive",
                                                      b"upgrade", b"proxy-connection"):
                    return self._malformed(stream, f"header {name!r} not allowed in HTTP/2")
        if method != b"POST" or not stream.path:
            return self._malformed(stream, "request without POST or :path")
        if content_type is None or not content_type.startswith(b"application/grpc"):
            stream.answered = True
            self._send_headers(stream.stream_id, END_STREAM, hpack.encode_plain(
                ((b":status", b"415"), (b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % INTERNAL),
                 (b"grpc-message", b"content-type is not application/grpc"))))
            return self._sent_all(stream)
        if self.paths is not None and stream.path not in self.paths:
            return self._refuse(stream, UNIMPLEMENTED, f"method {stream.path} not implemented")
        self._accepted = (list(headers), stream.path, stream.timeout)  # a copy: the event hands out the list
        return None

    def _malformed(self, stream: ServerStream, reason: str) -> None:
        """A malformed request is a stream error PROTOCOL_ERROR (RFC 9113 section 8.1.1)."""
        stream.answered = stream.done = True
        self.streams.pop(stream.stream_id, None)
        self._out += frame(RST_STREAM, 0, stream.stream_id, PROTOCOL_ERROR.to_bytes(4, "big"))

    def _data_stream(self, sid: int, length: int, end: bool) -> ServerStream | None:
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_client_id or not sid & 1:
                self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return None  # a stream we closed: counted, dropped
        if stream.remote_closed:
            self._out += frame(RST_STREAM, 0, sid, STREAM_CLOSED.to_bytes(4, "big"))
            self._drop(stream, STREAM_CLOSED)
            return None
        if stream.answered:
            return None
        if stream.body_len + length > PREFIX_LEN + self.max_message:
            self._refuse(stream, RESOURCE_EXHAUSTED, f"request message larger than {self.max_message} bytes")
            return None
        return stream

    def _on_data_end(self, sid: int, stream: ServerStream | None, end: bool) -> None:
        if stream is None:
            return
        if not stream.checked and stream.body_len >= PREFIX_LEN:
            stream.checked = True
            try:
                length = message_length(stream.body[:PREFIX_LEN])
            except ValueError as e:
                return self._refuse(stream, INTERNAL, str(e))
            if length > self.max_message:
                return self._refuse(stream, RESOURCE_EXHAUSTED,
                                    f"request message of {length} bytes (limit {self.max_message})")
        if end:
            self._request_done(stream)
        return None

    def _request_done(self, stream: ServerStream) -> None:
        """The client ended its side: deliver the request, unless it was answered already."""
        stream.remote_closed = True
        if stream.answered:
            if stream.done:
                self.streams.pop(stream.stream_id, None)
            return None
        body, n = stream.body, stream.body_len
        if n < PREFIX_LEN:
            return self._refuse(stream, INTERNAL, "request without a message")
        if n != PREFIX_LEN + int.from_bytes(body[1:5], "big"):
            return self._refuse(stream, INTERNAL, "request is not exactly one message")
        message = bytes(memoryview(body)[PREFIX_LEN:n])
        stream.body = bytearray()
        stream.body_len = 0
        stream.delivered = True
        self._events.append(RequestReceived(stream.stream_id, stream.path, message, stream.timeout, stream.headers))
        return None

    def _drop(self, stream: ServerStream, code: int) -> None:
        """Forget ``stream`` (reset); tell the skin when its request was being handled."""
        stream.done = True
        stream.head = b""
        stream.pending = memoryview(b"")
        stream.body = bytearray()
        self.streams.pop(stream.stream_id, None)
        if stream.delivered:  # (a stream still here is not fully answered)
            self._events.append(StreamReset(stream.stream_id, code))

    def _on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            self._drop(stream, code)
        elif sid > self.last_client_id:
            self._fail(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")

    def _on_goaway(self, last: int, code: int, debug: bytes) -> None:
        text = debug.decode("utf-8", "replace")
        if code == NO_ERROR:
            self._end("the client is going away" + (f": {text}" if text else ""), code, True)
        else:
            self.closed_reason = f"client sent GOAWAY (HTTP/2 error {code}{': ' + text if text else ''})"
            self._end(self.closed_reason, code, False)
