"""Process tier with the real kata-agent (process sandbox) instead of the stand-in peer:
concurrent Health calls through kata-proxy, then the sandbox stopping -> exit 5."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from kata_proxy import exits
from tests.proxy.clients import LOCAL_POOL, health_check
from tests.support.proxy import start_proxy

pytestmark = pytest.mark.sandbox


async def test_real_agent_through_the_proxy(sockdir, procs):
    import grpc
    from katapb import health_pb2

    from kata_runtime.hypervisor import ProcessSandbox

    sb = ProcessSandbox(sockdir, f"kp-{uuid.uuid4().hex[:10]}")
    await sb.start()
    try:
        proxy = start_proxy(sockdir, mux=sb.channel_socket_path,
                                          args=["--sandbox", sb.sandbox_id])
        procs.append(proxy)

        async def one_client():
            async with grpc.aio.insecure_channel("unix:" + proxy.listen, options=LOCAL_POOL) as ch:
                for _ in range(3):
                    assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING

        await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(12))), 120)
        assert proxy.stats()["accepted"] >= 12
    finally:
        await sb.stop()
    # the VM (here: the sandboxed agent) is gone: the proxy says so and exits 5
    assert await asyncio.to_thread(proxy.wait, 20) == exits.CHANNEL_CLOSED
    assert any("guest channel closed" in line for line in proxy.log_lines())
    assert not os.path.exists(proxy.listen)
