"""Process tier: gRPC through a real kata-proxy to the agent stand-in (health + streaming)."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy.clients import LOCAL_POOL, count_stream, health_check

pytestmark = pytest.mark.sandbox


async def test_unary_and_streaming_from_many_clients(proxy, peer):
    import grpc
    from katapb import health_pb2

    async def one_client(i: int):
        # each channel has its own subchannel pool: its own connection, so its own yamux stream
        async with grpc.aio.insecure_channel("unix:" + proxy.listen, options=LOCAL_POOL) as channel:
            for _ in range(5):
                assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
            seen = await count_stream(channel, 40 + i, 512)
            assert seen == list(range(40 + i))
            # unary and streaming calls interleaved on one connection
            results = await asyncio.gather(
                count_stream(channel, 20, 4096),
                *(health_check(channel) for _ in range(5)),
                channel.unary_unary("/kata.test.Peer/Echo")(b"x" * (i + 1), timeout=30),
            )
            assert results[0] == list(range(20))
            assert results[-1] == b"x" * (i + 1)

    await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(24))), 120)
    stats = proxy.stats()
    assert stats["accepted"] >= 24
    kinds = [line for line in peer.events() if "kind=grpc" in line]
    assert len(kinds) >= 24


async def test_large_unary_messages(proxy):
    import grpc

    payload = bytes(range(256)) * 4096  # 1 MiB, several yamux windows
    async with grpc.aio.insecure_channel(
        "unix:" + proxy.listen,
        options=LOCAL_POOL + [("grpc.max_receive_message_length", 8 << 20)],
    ) as channel:
        echo = channel.unary_unary("/kata.test.Peer/Echo")
        for _ in range(3):
            assert await echo(payload, timeout=60) == payload
