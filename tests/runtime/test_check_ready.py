"""kata_runtime.agent.check_ready: the QEMU boot probe (one Health Check, cancellable, no grpcio),
against kata_grpc's real server on a unix socket."""

from __future__ import annotations

import asyncio

import pytest

from kata_grpc.aio import serve_unix
from kata_grpc.protocol import NOT_FOUND, RpcError
from kata_runtime.agent import AgentError, check_ready
from katapb import health_pb2
from tests.support.processes import python_prints

CHECK = "/grpc.Health/Check"


async def _serving(tmp_path, handler):
    path = str(tmp_path / "proxy.sock")
    return path, await serve_unix(path, {CHECK: handler})


async def test_returns_once_the_agent_answers(tmp_path):
    answered = asyncio.Event()

    async def check(request: bytes) -> bytes:
        await answered.wait()  # the agent is still booting
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()

    path, server = await _serving(tmp_path, check)
    try:
        probe = asyncio.create_task(check_ready(path, 30))
        await asyncio.sleep(0.2)
        assert not probe.done()
        answered.set()
        await asyncio.wait_for(probe, 30)
    finally:
        await server.close(grace=0)


async def test_cancelling_the_probe_closes_the_connection(tmp_path):
    """The driver gave up (boot timeout): the call in the agent is cancelled, nothing waits on."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def check(request: bytes) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    path, server = await _serving(tmp_path, check)
    try:
        probe = asyncio.create_task(check_ready(path, 300))
        await asyncio.wait_for(started.wait(), 30)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        await asyncio.wait_for(cancelled.wait(), 30)  # the server saw the connection go
    finally:
        await server.close(grace=0)


async def test_a_status_from_the_agent_is_an_agent_error(tmp_path):
    async def check(request: bytes) -> bytes:
        raise RpcError(NOT_FOUND, "no health here")

    path, server = await _serving(tmp_path, check)
    try:
        with pytest.raises(AgentError) as err:
            await check_ready(path, 30)
        assert (err.value.code, err.value.details) == ("NOT_FOUND", "no health here")
    finally:
        await server.close(grace=0)


async def test_no_answer_within_the_timeout(tmp_path):
    async def check(request: bytes) -> bytes:
        await asyncio.Event().wait()

    path, server = await _serving(tmp_path, check)
    try:
        with pytest.raises(AgentError) as err:
            await check_ready(path, 0.3)
        assert err.value.code == "DEADLINE_EXCEEDED"
    finally:
        await server.close(grace=0)


async def test_no_proxy_socket_yet_is_waited_for(tmp_path):
    """As grpcio's wait_for_ready: a socket that cannot be connected to is tried again, until
    the deadline, which names the last failure."""
    with pytest.raises(AgentError) as err:
        await check_ready(str(tmp_path / "missing.sock"), 0.3)
    assert err.value.code == "DEADLINE_EXCEEDED" and "cannot connect" in err.value.details

    path = tmp_path / "late.sock"

    async def check(request: bytes) -> bytes:
        return b""

    probe = asyncio.create_task(check_ready(str(path), 30))
    await asyncio.sleep(0.3)
    server = await serve_unix(str(path), {CHECK: check})
    try:
        await asyncio.wait_for(probe, 30)
    finally:
        await server.close(grace=0)


async def test_a_peer_that_hangs_up_is_tried_again(tmp_path):
    """kata-proxy closes a client's stream when its session to the guest ends (QEMU died):
    the probe tries again rather than failing, so the driver, which watches QEMU, says why."""
    path = str(tmp_path / "proxy.sock")
    connections = 0

    async def hang_up(reader, writer):
        nonlocal connections
        connections += 1
        await reader.read(1)
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path)
    try:
        with pytest.raises(AgentError) as err:
            await check_ready(path, 0.5, retry_interval=0.05)
        assert err.value.code == "DEADLINE_EXCEEDED" and "closed by the agent side" in err.value.details
        assert connections > 1
    finally:
        server.close()


def test_the_probe_does_not_import_grpcio():
    code = ("import asyncio, sys\n"
            "from kata_runtime.agent import AgentError, check_ready\n"
            "try:\n"
            "    asyncio.run(check_ready('/nonexistent/proxy.sock', 1))\n"
            "except AgentError:\n"
            "    pass\n"
            "print('grpc' in sys.modules)\n")
    assert python_prints(code) == "False"
