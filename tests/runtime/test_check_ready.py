"""kata_runtime.agent.check_ready: the QEMU boot probe (one Health Check, cancellable, no grpcio),
against kata_grpc's real server on a unix socket."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from kata_grpc.aio import serve_unix
from kata_grpc.protocol import NOT_FOUND, RpcError
from kata_runtime.agent import AgentError, check_ready
from katapb import health_pb2

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


async def test_no_proxy_socket(tmp_path):
    with pytest.raises(AgentError) as err:
        await check_ready(str(tmp_path / "missing.sock"), 30)
    assert err.value.code == "UNAVAILABLE" and err.value.unreachable


async def test_a_peer_that_hangs_up(tmp_path):
    """A proxy whose agent side went away closes the stream: UNAVAILABLE, not a hang."""
    path = str(tmp_path / "proxy.sock")

    async def hang_up(reader, writer):
        await reader.read(1)
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path)
    try:
        with pytest.raises(AgentError) as err:
            await check_ready(path, 30)
        assert err.value.code == "UNAVAILABLE" and "closed" in err.value.details
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
