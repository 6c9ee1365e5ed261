"""The agent's yamux bridge in one process: a yamux client session (the proxy's role) against
kata_agent.bridge over a socketpair / listening channel, with an echo server as the target."""

import asyncio
import inspect
import os
import socket

import pytest

from kata_agent import channel as ch
from kata_agent.bridge import Bridge, open_session, session_config

yamux = pytest.importorskip("yamux")


async def echo_server(path):
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path)


async def echo_roundtrip(session, payload: bytes) -> bytes:
    stream = await session.open_stream()
    async def send():
        for i in range(0, len(payload), 100_000):
            stream.write(payload[i:i + 100_000])
            await stream.drain()
        res = stream.write_eof()
        if inspect.isawaitable(res):
            await res
    sender = asyncio.ensure_future(send())
    got = await stream.read_until_eof()
    await sender
    return got


@pytest.fixture
async def echo(tmp_path):
    path = str(tmp_path / "grpc.sock")
    server = await echo_server(path)
    yield path
    server.close()
    await server.wait_closed()


async def test_bridge_splices_concurrent_streams_and_answers_pings(echo):
    a, b = socket.socketpair()
    agent_side = await yamux.Session.from_socket(a, client=False, config=session_config())
    host_side = await yamux.Session.from_socket(b, client=True, config=yamux.Config(enable_keepalive=False))
    bridge = Bridge(echo)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))

    payloads = [os.urandom(n) for n in (0, 1, 1000, 300_000, 2 << 20, 3 << 20, 17, 65536)]
    results = await asyncio.wait_for(asyncio.gather(*(echo_roundtrip(host_side, p) for p in payloads)), 60)
    assert results == payloads
    assert bridge.streams_served == len(payloads)
    assert await host_side.ping() < 5  # keepalive is off on both ends, but pings are answered

    await host_side.close()  # the proxy goes away
    reason = await asyncio.wait_for(serving, 10)
    assert reason == "the host hung up"
    assert agent_side.closed


async def test_stream_is_reset_when_the_grpc_server_is_unreachable(tmp_path, echo):
    a, b = socket.socketpair()
    agent_side = await yamux.Session.from_socket(a, client=False, config=session_config())
    host_side = await yamux.Session.from_socket(b, client=True, config=yamux.Config(enable_keepalive=False))
    bridge = Bridge(str(tmp_path / "nobody-listens.sock"))
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    stream = await host_side.open_stream()
    stream.write(b"PRI * HTTP/2.0\r\n")
    with pytest.raises(yamux.StreamResetError):
        await asyncio.wait_for(stream.read_until_eof(), 10)
    # the session survives one bad stream
    bridge.target = echo
    assert await echo_roundtrip(host_side, b"still here") == b"still here"
    await host_side.close()
    await asyncio.wait_for(serving, 10)


async def test_streams_wait_for_the_server_to_be_ready(echo):
    a, b = socket.socketpair()
    agent_side = await yamux.Session.from_socket(a, client=False, config=session_config())
    host_side = await yamux.Session.from_socket(b, client=True, config=yamux.Config(enable_keepalive=False))
    ready = asyncio.Event()
    bridge = Bridge(echo, ready=ready)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    pending = asyncio.ensure_future(echo_roundtrip(host_side, b"early"))
    await asyncio.sleep(0.2)
    assert not pending.done()
    ready.set()
    assert await asyncio.wait_for(pending, 10) == b"early"
    await host_side.close()
    await asyncio.wait_for(serving, 10)


async def test_run_ends_with_a_socket_channel(tmp_path, echo):
    path = str(tmp_path / "kata.sock")
    channel = ch.open_channel(socket_path=path)  # listens like QEMU's chardev server
    bridge = Bridge(echo)
    running = asyncio.ensure_future(bridge.run(channel))
    host_side = await yamux.Session.connect_unix(path, client=True, config=yamux.Config(enable_keepalive=False))
    assert await echo_roundtrip(host_side, b"x" * 100_000) == b"x" * 100_000
    await host_side.close()
    reason = await asyncio.wait_for(running, 10)
    assert reason.startswith("the host hung up (unix socket ")
    assert not os.path.exists(path)


async def test_open_session_on_a_device_fd_closes_our_copy(echo):
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
    bridge = Bridge(echo)
    serving = asyncio.ensure_future(bridge.serve_session(agent_side))
    payload = os.urandom(200_000)
    assert await asyncio.wait_for(echo_roundtrip(host_side, payload), 30) == payload
    await host_side.close()
    await agent_side.close()
    await asyncio.wait_for(serving, 10)
