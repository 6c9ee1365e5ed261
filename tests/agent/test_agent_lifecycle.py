"""Sandbox lifecycle on fresh agents, output bounds, exec races, concurrency."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest

from katapb import agent_pb2
from tests.support.agent import AgentClient, AgentServer
from tests.support.oci import busybox_spec

pytestmark = pytest.mark.timeout(120)

Code = grpc.StatusCode


@pytest.fixture
def fresh_server():
    """An agent of its own, run on the plain asyncio loop (the reaper's other mode)."""
    server = AgentServer(loop="asyncio")
    try:
        yield server
    finally:
        server.stop()
        left = server.leftover_containers()
        server.cleanup()
        assert not left, f"containers left behind: {left}"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def test_sandbox_lifecycle(fresh_server):
    client = AgentClient(fresh_server)
    s = client.stub
    try:
        cid = "early"
        fresh_server.make_rootfs(cid)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await s.CreateContainer(agent_pb2.CreateContainerRequest(
                container_id=cid, OCI=busybox_spec(cid, ["true"])))
        assert e.value.code() == Code.FAILED_PRECONDITION
        assert "CreateSandbox" in e.value.details()
        # DestroySandbox before CreateSandbox: a no-op, as in the Go agent.
        await s.DestroySandbox(agent_pb2.DestroySandboxRequest())
        await s.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="h1"))
        running = await client.create(["sleep", "1000"], start=True)
        created = await client.create(["true"])
        waiter = asyncio.ensure_future(client.wait(running))
        await asyncio.sleep(0.05)
        await s.DestroySandbox(agent_pb2.DestroySandboxRequest())
        assert await waiter == 137
        assert fresh_server.leftover_containers() == []
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.start(created)
        assert e.value.code() == Code.FAILED_PRECONDITION
        # A new sandbox in the same agent.
        await s.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="h2"))
        out, _, status = await client.run(["echo", "again"])
        assert (out, status) == (b"again\n", 0)
    finally:
        await client.close()


async def test_sigterm_removes_containers(fresh_server):
    fresh_server.create_sandbox()
    client = AgentClient(fresh_server)
    try:
        await client.create(["sleep", "1000"], start=True)
        await client.create(["sleep", "1000"])
        assert len(fresh_server.leftover_containers()) == 2
    finally:
        await client.channel.close()
    fresh_server.proc.send_signal(signal.SIGTERM)
    assert fresh_server.proc.wait(20) == 0
    assert fresh_server.leftover_containers() == []


async def test_full_buffer_blocks_the_writer(agent: AgentClient):
    """Nobody reads: the process blocks (no exit, no data lost, agent memory bounded)."""
    n = 24 << 20
    pid = agent.server.proc.pid
    before = rss_kib(pid)
    cid = await agent.create(["sh", "-c", f"head -c {n} /dev/zero; echo done >&2"], start=True)
    await asyncio.sleep(1.0)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await agent.wait(cid, timeout=0.5)
    assert e.value.code() == Code.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await agent.read(cid, stderr=True, timeout=0.3)
    assert e.value.code() == Code.DEADLINE_EXCEEDED
    grown = rss_kib(pid) - before
    assert grown < 12 * 1024, f"agent RSS grew by {grown} KiB with {n >> 20} MiB unread"
    assert len(await agent.read_all(cid)) == n
    assert await agent.read_all(cid, stderr=True) == b"done\n"
    assert await agent.wait(cid) == 0


async def test_many_quick_execs(agent: AgentClient):
    """Exec'd processes that exit before runc has even returned are still reaped right."""
    cid = await agent.create(["sleep", "1000"], start=True)

    async def one(i):
        eid = await agent.exec(cid, ["sh", "-c", f"echo {i}; exit {i % 7}"])
        out = await agent.read_all(cid, eid)
        return out, await agent.wait(cid, eid)

    results = await asyncio.gather(*(one(i) for i in range(24)))
    assert results == [(f"{i}\n".encode(), i % 7) for i in range(24)]


async def test_concurrent_containers(agent: AgentClient):
    results = await asyncio.gather(*(agent.run(["sh", "-c", f"echo c{i}; exit {i}"])
                                     for i in range(6)))
    assert results == [(f"c{i}\n".encode(), b"", i) for i in range(6)]


async def test_wait_before_start_and_concurrent_reads(agent: AgentClient):
    cid = await agent.create(["sh", "-c", "head -c 3000000 /dev/zero"])
    waiter = asyncio.ensure_future(agent.wait(cid))
    # Several readers of one stream split the data between them; none loses any.
    readers = [asyncio.ensure_future(agent.read_all(cid, n=4096)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await agent.start(cid)
    parts = await asyncio.gather(*readers)
    assert sum(len(p) for p in parts) == 3000000
    assert await waiter == 0
    assert os.path.exists(os.path.join(agent.server.shared, cid, "config.json"))
