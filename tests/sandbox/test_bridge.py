"""The agent's yamux bridge in one process: a yamux client session (the proxy's role) against
kata_agent.bridge over a socketpair / listening channel; each stream is one HTTP/2 connection
of gRPC calls, made here with kata_grpc's client core (kata_grpc.h2) on the yamux stream."""

import asyncio
import os
import socket

import pytest

from kata_agent import channel as ch
from kata_agent.bridge import Bridge, open_session, session_config
from kata_agent.config import AgentConfig
from kata_agent.sandbox import Sandbox
from kata_agent.service import handlers
from kata_grpc import h2
from kata_grpc.client import header_block
from kata_grpc.protocol import NOT_FOUND, RpcError
from katapb import health_pb2

yamux = pytest.importorskip("yamux")


async def echo(request: bytes) -> bytes:
    return request


async def not_found(request: bytes) -> bytes:
    raise RpcError(NOT_FOUND, f"nothing named {request.decode()}")


HANDLERS = {"/test.Echo/Echo": echo, "/test.Echo/Missing": not_found}


class StreamClient:
    """Unary gRPC calls, one at a time, on one yamux stream (kata_grpc.h2's sans-IO client)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.conn = h2.Connection()

    @classmethod
    async def open(cls, session) -> "StreamClient":
        return cls(await session.open_stream())

    async def call(self, path: str, message: bytes) -> bytes:
        call = self.conn.request(header_block(path), message)
        while True:
            for segment in self.conn.output():
                self.stream.write(segment)
            await self.stream.drain()
            if call.done:
                return bytes(call.result())
            data = await self.stream.read(1 << 16)
            if not data:
                raise EOFError("the agent closed the stream")
            self.conn.receive(data)


async def sessions():
    a, b = socket.socketpair()
    agent_side = await yamux.Session.from_socket(a, client=False, config=session_config())
    host_side = await yamux.Session.from_socket(b, client=True, config=yamux.Config(enable_keepalive=False))
    return agent_side, host_side


async def echo_calls(session, payloads) -> list[bytes]:
    client = await StreamClient.open(session)
    got = [await client.call("/test.Echo/Echo", p) for p in payloads]
    client.stream.close()
    return got


async def test_bridge_serves_grpc_on_concurrent_streams_and_answers_pings():
    agent_side, host_side = await sessions()
    bridge = Bridge(HANDLERS)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))

    payloads = [[os.urandom(n) for n in sizes]
                for sizes in ((0, 1), (1000, 300_000), (2 << 20,), (3 << 20, 17), (65536,), (5, 6, 7))]
    results = await asyncio.wait_for(asyncio.gather(*(echo_calls(host_side, p) for p in payloads)), 60)
    assert results == payloads
    assert bridge.streams_served == len(payloads)
    assert await host_side.ping() < 5  # keepalive is off on both ends, but pings are answered

    await host_side.close()  # the proxy goes away
    reason = await asyncio.wait_for(serving, 10)
    assert reason == "the host hung up"
    assert agent_side.closed


async def test_a_status_and_the_service_handlers_on_a_stream(tmp_path):
    agent_side, host_side = await sessions()
    sandbox = Sandbox(AgentConfig(state_dir=str(tmp_path), shared_mount=str(tmp_path / "shared"),
                                  manage_system=False))
    bridge = Bridge({**HANDLERS, **handlers(sandbox)})
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    client = await StreamClient.open(host_side)
    with pytest.raises(RpcError) as info:
        await client.call("/test.Echo/Missing", b"x")
    assert (info.value.code, info.value.message) == (NOT_FOUND, "nothing named x")
    reply = await client.call("/grpc.Health/Check", health_pb2.CheckRequest().SerializeToString())
    assert health_pb2.HealthCheckResponse.FromString(reply).status == health_pb2.HealthCheckResponse.SERVING
    await host_side.close()
    await asyncio.wait_for(serving, 10)


async def test_a_stream_that_is_not_http2_ends_and_the_session_serves_on():
    agent_side, host_side = await sessions()
    bridge = Bridge(HANDLERS)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    bad = await host_side.open_stream()
    bad.write(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
    await bad.drain()
    try:
        await asyncio.wait_for(bad.read_until_eof(), 10)  # the server's SETTINGS and GOAWAY, then the end
    except yamux.StreamResetError:
        pass
    assert await echo_calls(host_side, [b"still here"]) == [b"still here"]
    await host_side.close()
    await asyncio.wait_for(serving, 10)


async def test_run_ends_with_a_socket_channel(tmp_path):
    path = str(tmp_path / "kata.sock")
    channel = ch.open_channel(socket_path=path)  # listens like QEMU's chardev server
    bridge = Bridge(HANDLERS)
    running = asyncio.ensure_future(bridge.run(channel))
    host_side = await yamux.Session.connect_unix(path, client=True, config=yamux.Config(enable_keepalive=False))
    assert await echo_calls(host_side, [b"x" * 100_000]) == [b"x" * 100_000]
    await host_side.close()
    reason = await asyncio.wait_for(running, 10)
    assert reason.startswith("the host hung up (unix socket ")
    assert not os.path.exists(path)


async def test_open_session_on_a_device_fd_closes_our_copy():
    """A character device channel (a raw pty pair stands in for /dev/vportNpM)."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    transport = ch.Transport(fd=master, description="fake device")
    agent_side = await open_session(transport)  # yamux dups the fd; ours is closed
    with pytest.raises(OSError):
        os.fstat(master)
    host_side = await yamux.Session.from_fd(slave, client=True, config=yamux.Config(enable_keepalive=False))
    os.close(slave)
    bridge = Bridge(HANDLERS)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    payload = os.urandom(200_000)
    assert await asyncio.wait_for(echo_calls(host_side, [payload]), 30) == [payload]
    await host_side.close()
    await agent_side.close()
    await asyncio.wait_for(serving, 10)
