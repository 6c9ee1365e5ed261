"""Client helpers for the proxy process tests (plain asyncio streams and grpc.aio)."""

from __future__ import annotations

import asyncio
import hashlib
import struct

from tests.peers.yamux_health_server import pattern

MiB = 1 << 20
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


async def echo_bulk(path: str, total: int) -> tuple[int, str, str]:
    """Send ``total`` pattern bytes through an echo stream while reading them back.
    Returns (bytes received, sha256 sent, sha256 received)."""
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0

    async def send():
        writer.write(b"E")
        for block in pattern(total):
            sent.update(block)
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    async def recv():
        nonlocal received
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            received += len(data)
            got.update(data)

    try:
        await asyncio.gather(send(), recv())
    finally:
        writer.close()
    return received, sent.hexdigest(), got.hexdigest()


async def sink(path: str, total: int) -> tuple[int, bytes, bytes]:
    """Upload ``total`` pattern bytes to a sink stream; returns (count, sha sent, sha reported)."""
    reader, writer = await asyncio.open_unix_connection(path)
    digest = hashlib.sha256()
    writer.write(b"S")
    for block in pattern(total):
        digest.update(block)
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    reply = await reader.readexactly(40)
    assert await reader.read() == b""
    writer.close()
    count, = struct.unpack(">Q", reply[:8])
    return count, digest.digest(), reply[8:]


async def health_check(channel) -> int:
    from katapb import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.CheckRequest(service="kata-proxy-test"), timeout=30)
    return resp.status


async def count_stream(channel, n: int, size: int) -> list[int]:
    call = channel.unary_stream("/kata.test.Peer/Count")(struct.pack(">II", n, size), timeout=60)
    seen = []
    async for reply in call:
        assert len(reply) == size
        seen.append(struct.unpack(">I", reply[:4])[0])
    return seen
