"""Client helpers for the proxy process tests (plain asyncio streams and grpc.aio)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct

from tests.support.proxy import pattern

MiB = 1 << 20
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


async def send_pattern(writer, kind: bytes, total: int, digest) -> None:
    """Open a ``kind`` stream (``E`` echo, ``S`` sink), send ``total`` pattern bytes (added to
    ``digest``), then EOF."""
    writer.write(kind)
    for block in pattern(total):
        digest.update(block)
        writer.write(block)
        await writer.drain()
    writer.write_eof()


def echo_socket(path: str, payload: bytes, timeout: float = 10) -> socket.socket:
    """A blocking socket on the proxy at ``path`` with an echo stream open, checked by one
    round trip of ``payload``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(b"E" + payload)
    assert s.recv(len(payload)) == payload
    return s


async def echo_bulk(path: str, total: int) -> tuple[int, str, str]:
    """Send ``total`` pattern bytes through an echo stream while reading them back.
    Returns (bytes received, sha256 sent, sha256 received)."""
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0

    async def recv():
        nonlocal received
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            received += len(data)
            got.update(data)

    try:
        await asyncio.gather(send_pattern(writer, b"E", total, sent), recv())
    finally:
        writer.close()
    return received, sent.hexdigest(), got.hexdigest()


async def sink(path: str, total: int) -> tuple[int, bytes, bytes]:
    """Upload ``total`` pattern bytes to a sink stream; returns (count, sha sent, sha reported)."""
    reader, writer = await asyncio.open_unix_connection(path)
    digest = hashlib.sha256()
    await send_pattern(writer, b"S", total, digest)
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
