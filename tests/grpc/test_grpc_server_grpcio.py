"""kata_grpc's server (kata_grpc.aio over a unix socket) against grpcio's own client, with the
real generated stubs of proto/katapb: the agent's methods as the host calls them."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc
from kata_grpc.aio import serve_unix
from kata_grpc.protocol import NOT_FOUND, RpcError


class Agent:
    """Handlers as kata-agent will give them: bytes in, bytes out, RpcError for a status."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.active = 0
        self.most_active = 0

    def handlers(self) -> dict:
        return {
            "/grpc.Health/Check": self.check,
            "/grpc.Health/Version": self.version,
            "/grpc.AgentService/ReadStdout": self.read_stdout,
            "/grpc.AgentService/WriteStdin": self.write_stdin,
            "/grpc.AgentService/ReadStderr": self.read_stderr,
            "/grpc.AgentService/SignalProcess": self.crash,
        }

    async def check(self, request: bytes) -> bytes:
        health_pb2.CheckRequest.FromString(request)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()

    async def version(self, request: bytes) -> bytes:
        return health_pb2.VersionCheckResponse(grpc_version="1.0.0", agent_version="kata-py").SerializeToString()

    async def read_stdout(self, request: bytes) -> bytes:
        req = agent_pb2.ReadStreamRequest.FromString(request)
        if req.exec_id == "wait":  # blocks until released or cancelled
            self.started.setdefault(req.container_id, asyncio.Event()).set()
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(req.container_id)
                raise
            finally:
                self.active -= 1
        return agent_pb2.ReadStreamResponse(data=bytes(range(256)) * (req.len // 256)).SerializeToString()

    async def write_stdin(self, request: bytes) -> bytes:
        req = agent_pb2.WriteStreamRequest.FromString(request)
        assert req.data == bytes(range(256)) * (len(req.data) // 256)
        return agent_pb2.WriteStreamResponse(len=len(req.data)).SerializeToString()

    async def read_stderr(self, request: bytes) -> bytes:
        raise RpcError(NOT_FOUND, "process \u201cx\u201d not found: 100% gone\r\n")

    async def crash(self, request: bytes) -> bytes:
        raise ValueError("handler bug")


@pytest.fixture
async def served(tmp_path):
    agent = Agent()
    path = str(tmp_path / "agent.sock")
    server = await serve_unix(path, agent.handlers())
    channel = grpc.aio.insecure_channel("unix:" + path, options=[
        ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
    try:
        yield agent, channel
    finally:
        await channel.close()
        await server.close()


async def test_check_and_version(served):
    agent, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.CheckRequest(service="x"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    version = await health.Version(health_pb2.CheckRequest())
    assert (version.grpc_version, version.agent_version) == ("1.0.0", "kata-py")


async def test_large_messages_both_ways(served):
    agent, channel = served
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    reply = await stub.ReadStdout(agent_pb2.ReadStreamRequest(len=3 << 20))  # 3 MiB: beyond the windows
    assert reply.data == bytes(range(256)) * (3 << 12)
    reply = await stub.WriteStdin(agent_pb2.WriteStreamRequest(data=bytes(range(256)) * (5 << 12)))
    assert reply.len == 5 << 20


async def test_statuses(served):
    agent, channel = served
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReadStderr(agent_pb2.ReadStreamRequest())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "process \u201cx\u201d not found: 100% gone\r\n"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SignalProcess(agent_pb2.SignalProcessRequest())
    assert info.value.code() == grpc.StatusCode.UNKNOWN and "handler bug" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.WaitProcess(agent_pb2.WaitProcessRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # the connection is still good
    assert (await stub.ReadStdout(agent_pb2.ReadStreamRequest(len=256))).data == bytes(range(256))


async def test_fifty_concurrent_calls(served):
    agent, channel = served
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    calls = [stub.ReadStdout(agent_pb2.ReadStreamRequest(container_id=str(i), exec_id="wait", len=512))
             for i in range(50)]
    pending = [asyncio.ensure_future(c) for c in calls]
    for i in range(50):
        await agent.started.setdefault(str(i), asyncio.Event()).wait()
    assert agent.most_active == 50  # all 50 handlers were running at once on one connection
    # another call goes through while they wait
    assert (await stub.WriteStdin(agent_pb2.WriteStreamRequest(data=b""))).len == 0
    agent.release.set()
    replies = await asyncio.gather(*pending)
    assert all(r.data == bytes(range(256)) * 2 for r in replies)


async def test_cancelled_call_cancels_the_handler(served):
    agent, channel = served
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    call = stub.ReadStdout(agent_pb2.ReadStreamRequest(container_id="c1", exec_id="wait"))
    await agent.started.setdefault("c1", asyncio.Event()).wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    while "c1" not in agent.cancelled:  # the RST_STREAM reaches the server
        await asyncio.sleep(0.01)
    assert agent.active == 0


async def test_deadline(served):
    agent, channel = served
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReadStdout(agent_pb2.ReadStreamRequest(container_id="d", exec_id="wait"), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    while "d" not in agent.cancelled:  # the server's handler is cancelled too
        await asyncio.sleep(0.01)


async def test_oversize_request_is_refused(tmp_path):
    agent = Agent()
    path = str(tmp_path / "small.sock")
    server = await serve_unix(path, agent.handlers(), max_message=1 << 20)
    try:
        async with grpc.aio.insecure_channel("unix:" + path) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.WriteStdin(agent_pb2.WriteStreamRequest(data=bytes(range(256)) * (12 << 10)))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.WriteStdin(agent_pb2.WriteStreamRequest(data=bytes(range(256))))).len == 256
    finally:
        await server.close()


async def test_graceful_close_lets_running_calls_finish(tmp_path):
    agent = Agent()
    path = str(tmp_path / "g.sock")
    server = await serve_unix(path, agent.handlers())
    channel = grpc.aio.insecure_channel("unix:" + path)
    try:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        running = asyncio.ensure_future(stub.ReadStdout(agent_pb2.ReadStreamRequest(container_id="g", exec_id="wait",
                                                                                    len=256)))
        await agent.started.setdefault("g", asyncio.Event()).wait()
        closing = asyncio.ensure_future(server.close(grace=60))
        await asyncio.sleep(0.1)
        assert not closing.done()  # waiting for the call in flight
        agent.release.set()
        assert (await running).data == bytes(range(256))
        await closing
        assert agent.cancelled == [] and not (tmp_path / "g.sock").exists()
    finally:
        await channel.close()
        await server.close()
