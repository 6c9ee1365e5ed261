"""A blocking unary gRPC channel on one unix-socket HTTP/2 connection (kata_grpc.h2 over a socket).

One :class:`Channel` is one connection (to kata-proxy's socket: one yamux stream to the
agent) that makes one call at a time: no threads, no locks, no event loop. kata-shim
gives each of its pumps a channel of its own; kata-runtime makes a command's few calls
on one. A method is named ``"Name"`` (of ``/grpc.AgentService/``) or by its full path
(``"/grpc.Health/Check"``).

Failures: :class:`kata_grpc.h2.RpcError` for a gRPC status from the server,
:class:`TransportError` when the connection cannot be made or breaks (the server side
is gone, or broke HTTP/2), :class:`DeadlineExceeded` (a TransportError) when a call with
a ``timeout`` did not finish in time. After a TransportError the next call connects again.

The connection is CPython's C socket type (``_socket.socket``, what ``socket.socket``
subclasses) without the ``socket`` module's Python layer, whose import (enum, selectors,
array) costs a kata-runtime command or a kata-shim ~3 ms of start-up (more under load):
none of its additions (makefile, sendfile, enum-typed families) is used here.
"""

from __future__ import annotations

import _socket
import time

from kata_grpc import h2

AGENT_SERVICE = b"/grpc.AgentService/"
RECV_SIZE = 64 << 10


class TransportError(Exception):
    """The connection could not be made, or broke during a call."""


class DeadlineExceeded(TransportError):
    """A call did not finish within its timeout (the connection is closed)."""


_HEADER_BLOCKS: dict[tuple[str, bytes], bytes] = {}


def header_block(method: str, user_agent: bytes = b"kata-shim") -> bytes:
    """The request header block of ``method`` (encoded once, then reused)."""
    key = (method, user_agent)
    block = _HEADER_BLOCKS.get(key)
    if block is None:
        path = method.encode() if method.startswith("/") else AGENT_SERVICE + method.encode()
        block = _HEADER_BLOCKS[key] = h2.request_headers(path, user_agent=user_agent)
    return block


def _send(sock: _socket.socket, segments: list) -> None:
    """Write every buffer of ``segments`` (gathered with sendmsg, no joining copy)."""
    if len(segments) == 1:
        sock.sendall(segments[0])
        return
    while segments:
        n = sock.sendmsg(segments[:512])
        while n:
            first = len(segments[0])
            if n >= first:
                n -= first
                del segments[0]
            else:
                segments[0] = memoryview(segments[0])[n:]
                n = 0


class Channel:
    """One blocking HTTP/2 connection to a unix socket; unary calls, one at a time."""

    def __init__(self, path: str, *, connect_timeout: float = 1.0, recv_size: int = RECV_SIZE,
                 user_agent: bytes = b"kata-shim") -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self.recv_size = recv_size
        self.user_agent = user_agent
        self.sock: _socket.socket | None = None
        self.conn: h2.Connection | None = None
        self._body = bytearray()  # reply buffer, reused: a reply is valid until the next call

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.conn = None

    def connect(self) -> None:
        self.close()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.path)
            sock.settimeout(None)
            conn = h2.Connection(in_size=self.recv_size)
            _send(sock, conn.output())
        except OSError as e:
            sock.close()
            raise TransportError(f"cannot connect to {self.path}: {e.strerror or e}") from None
        self.sock = sock
        self.conn = conn

    def unary(self, method: str, message, *, framed: bool = False, timeout: float | None = None) -> memoryview:
        """Call ``method`` with the encoded request; returns the encoded reply.

        ``framed``: ``message`` already starts with the gRPC message prefix and is sent
        without a copy.  The reply is a view of this channel's reply buffer: use it before
        the next call.  ``timeout``: seconds for the whole call (None: no limit).  Raises
        RpcError (a gRPC status from the server), TransportError or DeadlineExceeded.
        """
        if self.conn is None or not self.conn.usable:
            self.connect()
        conn = self.conn
        sock = self.sock
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            call = conn.request(header_block(method, self.user_agent), message, framed=framed, body=self._body)
            while True:
                out = conn.output()
                if call.done:  # before the deadline's check: an answer in hand stands
                    if out:
                        self._send_after_answer(out)
                    break
                if deadline is not None:
                    _arm(sock, deadline)
                if out:
                    _send(sock, out)
                room = conn.get_buffer()
                n = sock.recv_into(room)
                room.release()
                if not n:
                    raise TransportError("connection closed by the agent side")
                conn.buffer_updated(n)
        except TransportError:
            self.close()
            raise
        except h2.H2Error as e:
            self.close()
            raise TransportError(str(e)) from None
        except TimeoutError:
            self.close()
            raise DeadlineExceeded(f"{method}: no reply within {timeout:g}s") from None
        except OSError as e:
            self.close()
            raise TransportError(f"connection to {self.path} failed: {e.strerror or e}") from None
        if deadline is not None and self.sock is not None:
            sock.settimeout(None)
        self._body = call.body  # (a new one if the old was still held by a reply view)
        return call.result()

    def _send_after_answer(self, out) -> None:
        """Send what the connection owes the server once the answer is complete (a SETTINGS
        ack, WINDOW_UPDATEs). A server may close right after answering (a Quit): then this
        fails, the connection is dropped (the next call connects again) and the answer stands."""
        try:
            _send(self.sock, out)
        except OSError:
            self.close()


def _arm(sock: _socket.socket, deadline: float) -> None:
    """Give the socket's next operation what is left of the call's time (TimeoutError when none)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
