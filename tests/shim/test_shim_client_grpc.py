"""kata-shim's own gRPC client against a real grpcio server (the library the agent uses).

Covers interop of the HTTP/2 + HPACK core with grpc-core (Huffman-coded and indexed headers,
flow control on large replies and requests, error statuses, GOAWAY) and the reconnect
window of AgentClient.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import empty_pb2

from katapb import agent_pb2, agent_pb2_grpc
from kata_grpc import h2
from kata_shim.client import AgentClient, AgentLost, Channel
from kata_grpc.h2 import RpcError


class FakeAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.stdout = bytearray()
        self.status = 0

    def _log(self, name, req):
        with self.lock:
            self.requests.append((name, req))

    def ReadStdout(self, req, ctx):
        self._log("ReadStdout", req)
        if not self.stdout:
            ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "EOF")
        data = bytes(self.stdout[:req.len])
        del self.stdout[:req.len]
        return agent_pb2.ReadStreamResponse(data=data)

    def ReadStderr(self, req, ctx):
        self._log("ReadStderr", req)
        ctx.abort(grpc.StatusCode.NOT_FOUND, "process \u201cx\u201d not found: 100% gone\r\n")

    def WriteStdin(self, req, ctx):
        self._log("WriteStdin", req)
        return agent_pb2.WriteStreamResponse(len=min(len(req.data), 1000))

    def CloseStdin(self, req, ctx):
        self._log("CloseStdin", req)
        return empty_pb2.Empty()

    def SignalProcess(self, req, ctx):
        self._log("SignalProcess", req)
        return empty_pb2.Empty()

    def WaitProcess(self, req, ctx):
        self._log("WaitProcess", req)
        return agent_pb2.WaitProcessResponse(status=self.status)

    def TtyWinResize(self, req, ctx):
        self._log("TtyWinResize", req)
        return empty_pb2.Empty()


def start_server(path, servicer):
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


@pytest.fixture
def agent(tmp_path):
    servicer = FakeAgent()
    path = str(tmp_path / "agent.sock")
    server = start_server(path, servicer)
    servicer.path = path
    yield servicer
    server.stop(None)


def test_every_call(agent):
    c = AgentClient(agent.path, "ctr", "exec-1")
    agent.stdout += b"hello"
    assert bytes(c.read_stdout(100)) == b"hello"
    with pytest.raises(RpcError) as info:
        c.read_stdout(100)
    assert info.value.code == h2.OUT_OF_RANGE and info.value.message == "EOF"
    with pytest.raises(RpcError) as info:
        c.read_stderr(1)
    assert info.value.code == h2.NOT_FOUND
    assert info.value.message == "process \u201cx\u201d not found: 100% gone\r\n"
    assert c.write_stdin(b"z" * 5000) == 1000
    c.close_stdin()
    c.signal(15)
    c.resize(24, 80)
    agent.status = -7
    assert c.wait() == -7
    agent.status = 137
    assert c.wait() == 137
    names = [n for n, _ in agent.requests]
    assert names == ["ReadStdout", "ReadStdout", "ReadStderr", "WriteStdin", "CloseStdin", "SignalProcess",
                     "TtyWinResize", "WaitProcess", "WaitProcess"]
    for _, req in agent.requests:
        assert (req.container_id, req.exec_id) == ("ctr", "exec-1")
    reqs = dict(agent.requests[:8])
    assert reqs["ReadStdout"].len == 100 and reqs["SignalProcess"].signal == 15
    assert (reqs["TtyWinResize"].row, reqs["TtyWinResize"].column) == (24, 80)
    assert reqs["WriteStdin"].data == b"z" * 5000
    c.close()


def test_large_replies_and_requests_use_flow_control(agent):
    c = AgentClient(agent.path, "c", "c")
    blob = bytes(range(256)) * (40 << 10)  # 10 MiB: more than our 4 MiB windows
    agent.stdout += blob
    got = bytearray()
    while len(got) < len(blob):
        got += c.read_stdout(3 << 20)
    assert got == blob
    assert c.write_stdin(b"q" * (8 << 20)) == 1000  # 8 MiB request: many windows of the server's
    assert agent.requests[-1][1].data == b"q" * (8 << 20)


def test_many_calls_on_one_connection(agent):
    c = AgentClient(agent.path, "c", "c")
    for i in range(3000):
        c.signal(i % 64)
    assert len(agent.requests) == 3000
    assert c.channel.conn.next_id == 6001  # one connection, one stream per call


def test_lost_agent_gives_up_after_the_reconnect_window(tmp_path):
    c = AgentClient(str(tmp_path / "nobody.sock"), "c", "c", reconnect_timeout=0.4)
    t0 = time.monotonic()
    with pytest.raises(AgentLost, match="cannot connect"):
        c.wait()
    assert 0.35 < time.monotonic() - t0 < 3


def test_reconnects_when_the_server_comes_back(tmp_path):
    path = str(tmp_path / "agent.sock")
    servicer = FakeAgent()
    server = start_server(path, servicer)
    c = AgentClient(path, "c", "c", reconnect_timeout=10)
    c.signal(1)
    server.stop(None)
    restarted = []

    def restart():
        time.sleep(0.5)
        restarted.append(start_server(path, servicer))

    threading.Thread(target=restart).start()
    t0 = time.monotonic()
    servicer.status = 3
    assert c.wait() == 3  # retried across the outage
    assert 0.4 < time.monotonic() - t0 < 8
    restarted[0].stop(None)


def test_in_flight_call_fails_over_when_the_server_dies(tmp_path):
    path = str(tmp_path / "agent.sock")

    class Slow(FakeAgent):
        def WaitProcess(self, req, ctx):
            time.sleep(30)

    server = start_server(path, Slow())
    c = AgentClient(path, "c", "c", reconnect_timeout=0.3)
    threading.Timer(0.3, lambda: server.stop(None)).start()
    t0 = time.monotonic()
    with pytest.raises(AgentLost):
        c.wait()
    assert time.monotonic() - t0 < 5


def test_channel_reports_transport_errors(tmp_path):
    ch = Channel(str(tmp_path / "none.sock"))
    with pytest.raises(Exception, match="cannot connect"):
        ch.unary("WaitProcess", b"")


def test_write_stdin_in_place_without_copies(agent):
    c = AgentClient(agent.path, "ctr", "e" * 300, reconnect_timeout=1)
    data = bytes(range(256)) * (24 << 10)  # 6 MiB: several server windows, sent by reference
    room = c.stdin_headroom
    buf = bytearray(room) + bytearray(data)
    assert c.write_stdin_into(buf, room, len(buf)) == 1000  # FakeAgent accepts 1000 at most
    req = agent.requests[-1][1]
    assert req.data == data and req.exec_id == "e" * 300
    # resend the rest, as the stdin pump does: the header goes over already accepted bytes
    assert c.write_stdin_into(buf, room + 1000, len(buf)) == 1000
    assert agent.requests[-1][1].data == data[1000:]
    with pytest.raises(ValueError):
        c.write_stdin_into(bytearray(b"x" * 10), 0, 10)
