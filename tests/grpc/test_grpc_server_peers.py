"""kata_grpc's server (kata_grpc.aio) with our own clients: the blocking kata_grpc Channel (what
kata-shim and kata-runtime use) on a unix socket, and the client core over yamux streams, the
way the agent serves the host: one HTTP/2 connection per yamux stream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kata_grpc import h2
from kata_grpc.aio import serve_connection, serve_unix
from kata_grpc.client import Channel, TransportError
from kata_grpc.protocol import NOT_FOUND, OUT_OF_RANGE, RpcError
from yamux import Config, Session

BLOB = bytes(range(256)) * 4096  # 1 MiB


class Handlers(dict):
    """Echo-style handlers; ``Hang`` waits until cancelled (and records it)."""

    def __init__(self) -> None:
        super().__init__({"/grpc.AgentService/Echo": self.echo, "/grpc.AgentService/Blob": self.blob,
                          "/grpc.AgentService/Fail": self.fail, "/grpc.AgentService/Hang": self.hang})
        self.hanging = asyncio.Event()
        self.cancelled = 0

    async def echo(self, request: bytes) -> bytes:
        return request[::-1]

    async def blob(self, request: bytes) -> bytes:
        return BLOB

    async def fail(self, request: bytes) -> bytes:
        raise RpcError(OUT_OF_RANGE, "EOF")

    async def hang(self, request: bytes) -> bytes:
        self.hanging.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b""


async def test_kata_grpc_channel_against_our_server(tmp_path):
    handlers = Handlers()
    path = str(tmp_path / "s.sock")
    server = await serve_unix(path, handlers)
    channel = Channel(path, user_agent=b"test")
    try:
        assert bytes(await asyncio.to_thread(channel.unary, "Echo", b"abc")) == b"cba"
        assert bytes(await asyncio.to_thread(channel.unary, "Blob", b"")) == BLOB
        big = bytes(range(251)) * 9000  # ~2.2 MiB request: beyond the server's windows
        assert bytes(await asyncio.to_thread(channel.unary, "Echo", big)) == big[::-1]
        with pytest.raises(RpcError) as info:
            await asyncio.to_thread(channel.unary, "Fail", b"")
        assert (info.value.code, info.value.message) == (OUT_OF_RANGE, "EOF")
        with pytest.raises(RpcError) as info:
            await asyncio.to_thread(channel.unary, "/grpc.Health/Nope", b"")
        assert info.value.code == h2.UNIMPLEMENTED
        for i in range(200):  # many calls, one connection
            assert bytes(await asyncio.to_thread(channel.unary, "Echo", b"%d" % i)) == (b"%d" % i)[::-1]
        assert channel.conn.next_id == 2 * 205 + 1
    finally:
        channel.close()
        await server.close()
    assert not (tmp_path / "s.sock").exists()


async def test_channel_timeout_cancels_the_handler(tmp_path):
    handlers = Handlers()
    path = str(tmp_path / "s.sock")
    server = await serve_unix(path, handlers)
    channel = Channel(path)
    try:
        with pytest.raises(TransportError):  # DeadlineExceeded: the channel closes its connection
            await asyncio.to_thread(channel.unary, "Hang", b"", timeout=0.2)
        while not handlers.cancelled:  # the lost connection cancels the call's task
            await asyncio.sleep(0.01)
    finally:
        channel.close()
        await server.close()


async def call_over(stream, conn: h2.Connection, method: bytes, message: bytes) -> memoryview:
    """One call with the client core over a yamux stream."""
    call = conn.request(h2.request_headers(method), message)
    while not call.done:
        for segment in conn.output():
            stream.write(segment)
        await stream.drain()
        data = await stream.read(1 << 20)
        if not data:
            raise EOFError
        conn.receive(data)
    return call.result()


async def test_serving_yamux_streams():
    a, b = socket.socketpair()
    config = Config(enable_keepalive=False)
    host = await Session.from_socket(a, client=True, config=config)
    guest = await Session.from_socket(b, client=False, config=config)
    handlers = Handlers()
    served = []

    async def accept():
        while True:
            stream = await guest.accept_stream()
            served.append(asyncio.create_task(serve_connection(stream, stream, handlers)))

    acceptor = asyncio.create_task(accept())
    try:
        streams = [await host.open_stream() for _ in range(3)]
        conns = [h2.Connection() for _ in streams]
        replies = await asyncio.gather(*(call_over(s, c, b"/grpc.AgentService/Echo", b"n%d" % i)
                                         for i, (s, c) in enumerate(zip(streams, conns))))
        assert [bytes(r) for r in replies] == [b"0n", b"1n", b"2n"]
        assert bytes(await call_over(streams[0], conns[0], b"/grpc.AgentService/Blob", b"")) == BLOB
        with pytest.raises(RpcError) as info:
            await call_over(streams[1], conns[1], b"/grpc.AgentService/Fail", b"")
        assert info.value.code == OUT_OF_RANGE
        # the host resets a stream in the middle of a call: the call's task is cancelled
        hang = asyncio.create_task(call_over(streams[2], conns[2], b"/grpc.AgentService/Hang", b""))
        await handlers.hanging.wait()
        streams[2].reset()
        with pytest.raises(Exception):
            await hang
        reason = await served[2]
        assert "read failed" in reason and handlers.cancelled == 1
        # a stream closed by the host ends its connection cleanly
        streams[0].close()
        assert await served[0] == "the client closed the connection"
    finally:
        acceptor.cancel()
        await asyncio.gather(acceptor, return_exceptions=True)
        for task in served:
            task.cancel()
        await asyncio.gather(*served, return_exceptions=True)
        await host.close()
        await guest.close()


async def test_serve_unix_refuses_a_path_it_cannot_use(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        await serve_unix(str(tmp_path / "file" / "s.sock"), Handlers())
