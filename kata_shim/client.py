"""Blocking agent client of kata-shim: one HTTP/2 connection per calling thread.

Each pump of the shim (stdout, stderr, stdin, the waiter, the signal relay)
owns one :class:`AgentClient`, hence one connection to the proxy socket (one
yamux stream in the proxy), and makes one call at a time on it: no locks, no
hand-offs between threads, and a slow consumer of one stream never holds up
another.

Transport failures (the socket closes or cannot be connected, the peer breaks
HTTP/2, status UNAVAILABLE) are retried on a fresh connection, with back-off,
for ``reconnect_timeout`` seconds counted from the first failure in a row (the
proxy may be restarting); after that :class:`AgentLost` is raised and the shim
exits with its failure status.  A call interrupted by a lost connection is sent
again: a ReadStdout reply lost in flight, or a WriteStdin whose reply was lost,
cannot be recovered or told apart by the Kata 1.x protocol.
"""

from __future__ import annotations

import time

from kata_grpc import h2
from kata_grpc.client import Channel, TransportError
from kata_grpc.h2 import RpcError
from kata_shim import pb

__all__ = ["AgentClient", "AgentLost", "Channel", "RECV_SIZE", "SMALL_RECV_SIZE", "TransportError"]

# Input buffer of an output pump's connection, and of the others (small replies).  Reply
# payloads do not pass through it: the h2 core has them received straight into the reply
# buffer, which each channel keeps and reuses from call to call (no allocation per call).
RECV_SIZE = 64 << 10
SMALL_RECV_SIZE = 16 << 10


class AgentLost(Exception):
    """The agent (proxy) stayed unreachable for the whole reconnect window."""


class AgentClient:
    """The calls the shim makes about one process, with reconnect-and-retry."""

    def __init__(self, path: str, container_id: str, exec_id: str, *,
                 reconnect_timeout: float = 5.0, log=None, name: str = "",
                 recv_size: int = RECV_SIZE) -> None:
        self.channel = Channel(path, recv_size=recv_size)
        self.prefix = pb.process_prefix(container_id, exec_id)
        self.reconnect_timeout = reconnect_timeout
        self.log = log
        self.name = name

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, message, *, framed: bool = False) -> memoryview:
        deadline = None
        delay = 0.02
        while True:
            try:
                return self.channel.unary(method, message, framed=framed)
            except RpcError as e:
                if e.code != h2.UNAVAILABLE:
                    raise
                reason = f"{method}: {e}"
            except TransportError as e:
                reason = str(e)
            self.channel.close()
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.reconnect_timeout
                if self.log is not None:
                    self.log.warning("agent connection lost, retrying", call=method,
                                     error=reason, pump=self.name)
            if now >= deadline:
                raise AgentLost(reason)
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.25)

    # ---- the agent API, as the shim uses it

    def read_stdout(self, length: int) -> memoryview:
        return pb.read_stream_response(self.call("ReadStdout", pb.read_stream_request(self.prefix, length)))

    def read_stderr(self, length: int) -> memoryview:
        return pb.read_stream_response(self.call("ReadStderr", pb.read_stream_request(self.prefix, length)))

    def write_stdin(self, data) -> int:
        return pb.write_stream_response(self.call("WriteStdin", pb.write_stream_request(self.prefix, data)))

    @property
    def stdin_headroom(self) -> int:
        """Bytes :meth:`write_stdin_into` needs in front of the data it sends."""
        return 5 + len(self.prefix) + 1 + 5

    def write_stdin_into(self, buf: bytearray, start: int, end: int) -> int:
        """WriteStdin of ``buf[start:end]`` without copying it: the gRPC and protobuf
        headers are written in place into ``buf[start - headroom:start]``, which the
        caller no longer needs.  Returns how many bytes the agent accepted."""
        head = pb.write_stream_header(self.prefix, end - start)
        head = b"".join((b"\x00", (len(head) + end - start).to_bytes(4, "big"), head))
        first = start - len(head)
        if first < 0:
            raise ValueError("not enough headroom in front of the stdin data")
        buf[first:start] = head
        reply = self.call("WriteStdin", memoryview(buf)[first:end], framed=True)
        return pb.write_stream_response(reply)

    def close_stdin(self) -> None:
        self.call("CloseStdin", self.prefix)

    def signal(self, signum: int) -> None:
        self.call("SignalProcess", pb.signal_request(self.prefix, signum))

    def wait(self) -> int:
        return pb.wait_process_response(self.call("WaitProcess", self.prefix))

    def resize(self, rows: int, columns: int) -> None:
        self.call("TtyWinResize", pb.winsize_request(self.prefix, rows, columns))
