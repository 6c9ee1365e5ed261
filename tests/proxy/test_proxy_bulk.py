"""Process tier: 256 MiB byte-exact through one client connection and through 8 at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy.clients import MiB, echo_bulk, sink

pytestmark = pytest.mark.sandbox

TOTAL = 256 * MiB


@pytest.mark.timeout(600)
async def test_256_mib_one_connection(proxy):
    received, sent_sha, got_sha = await echo_bulk(proxy.listen, TOTAL)
    assert received == TOTAL
    assert got_sha == sent_sha


@pytest.mark.timeout(600)
async def test_256_mib_over_8_connections(proxy, peer):
    results = await asyncio.gather(*(echo_bulk(proxy.listen, TOTAL // 8) for _ in range(8)))
    for received, sent_sha, got_sha in results:
        assert received == TOTAL // 8
        assert got_sha == sent_sha
    ends = [line for line in peer.events() if "kind=E" in line]
    assert len(ends) == 8 and all("end=fin" in line for line in ends), ends


@pytest.mark.timeout(300)
async def test_upload_is_byte_exact(proxy):
    count, sent, reported = await sink(proxy.listen, 32 * MiB + 12345)
    assert count == 32 * MiB + 12345
    assert reported == sent
