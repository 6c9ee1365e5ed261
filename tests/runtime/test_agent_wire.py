"""kata-runtime's hand-encoded agent requests equal katapb's (the generated agent API) byte for byte,
and its client speaks to a real grpcio server: replies, statuses, a dead socket, a timeout."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import empty_pb2
from hypothesis import given, settings, strategies as st

from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc
from kata_runtime import agent as kagent

ids = st.text(min_size=0, max_size=80)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(cid=ids, eid=ids, n=u32)
def test_requests_by_hand_equal_katapb(cid, eid, n):
    assert kagent.container_request(cid) == agent_pb2.StartContainerRequest(container_id=cid).SerializeToString()
    assert kagent.container_request(cid) == agent_pb2.PauseContainerRequest(container_id=cid).SerializeToString()
    assert kagent.container_request(cid) == agent_pb2.StatsContainerRequest(container_id=cid).SerializeToString()
    assert kagent.remove_container_request(cid, n) == agent_pb2.RemoveContainerRequest(
        container_id=cid, timeout=n).SerializeToString()
    assert kagent.signal_process_request(cid, eid, n) == agent_pb2.SignalProcessRequest(
        container_id=cid, exec_id=eid, signal=n).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(cid=ids, fmt=ids, args=st.lists(ids, max_size=5), out=st.binary(max_size=500))
def test_list_processes_by_hand_equals_katapb(cid, fmt, args, out):
    assert kagent.list_processes_request(cid, fmt, args) == agent_pb2.ListProcessesRequest(
        container_id=cid, format=fmt, args=args).SerializeToString()
    reply = agent_pb2.ListProcessesResponse(process_list=out).SerializeToString()
    assert kagent.list_processes_response(reply) == out


storages = st.builds(lambda *a: a, ids, ids, ids, st.lists(ids, max_size=3), ids)


@settings(max_examples=200, deadline=None)
@given(cid=ids, eid=ids, hostname=ids, dns=st.lists(ids, max_size=3), stores=st.lists(storages, max_size=3),
       body=st.sampled_from([b"", b"\x12\x02\x1a\x00", b"\n\x051.0.2"]))
def test_sandbox_and_oci_requests_by_hand_equal_katapb(cid, eid, hostname, dns, stores, body):
    """CreateSandbox (with its Storages), and the requests that wrap an encoded OCI message:
    the OCI field is present even when the message is empty."""
    from katapb import oci_pb2

    pb_storages = [agent_pb2.Storage(driver=d, source=s, fstype=f, options=o, mount_point=m)
                   for d, s, f, o, m in stores]
    assert kagent.create_sandbox_request(cid, hostname, [kagent.storage(*s) for s in stores], dns) == \
        agent_pb2.CreateSandboxRequest(hostname=hostname, dns=dns, storages=pb_storages,
                                       sandbox_id=cid).SerializeToString()
    assert kagent.create_container_request(cid, body) == agent_pb2.CreateContainerRequest(
        container_id=cid, exec_id=cid, OCI=oci_pb2.Spec.FromString(body)).SerializeToString()
    assert kagent.exec_process_request(cid, eid, b"") == agent_pb2.ExecProcessRequest(
        container_id=cid, exec_id=eid, process=oci_pb2.Process()).SerializeToString()
    assert kagent.update_container_request(cid, b"") == agent_pb2.UpdateContainerRequest(
        container_id=cid, resources=oci_pb2.LinuxResources()).SerializeToString()


class FakeAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self):
        self.requests = []

    def StartContainer(self, req, ctx):
        self.requests.append(("StartContainer", req))
        return empty_pb2.Empty()

    def RemoveContainer(self, req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "container  x\nnot found")

    def ListProcesses(self, req, ctx):
        self.requests.append(("ListProcesses", req))
        return agent_pb2.ListProcessesResponse(process_list=b"PID\n1\n")

    def StatsContainer(self, req, ctx):
        return agent_pb2.StatsContainerResponse(cgroup_stats={"pids_stats": {"current": 3}})

    def SignalProcess(self, req, ctx):
        time.sleep(2)
        return empty_pb2.Empty()


class Health(health_pb2_grpc.HealthServicer):
    def Check(self, req, ctx):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def server(tmp_path):
    servicer = FakeAgent()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    servicer.path = str(tmp_path / "proxy.sock")
    server.add_insecure_port(f"unix:{servicer.path}")
    server.start()
    yield servicer
    server.stop(None)


def test_calls_statuses_and_replies_through_grpcio(server):
    with kagent.Agent(server.path) as agent:
        agent.start_container("c1")
        assert agent.list_processes("c1", "table", ["-ef"]) == b"PID\n1\n"
        assert agent.stats_container("c1").cgroup_stats.pids_stats.current == 3
        with pytest.raises(kagent.AgentError) as info:
            agent.remove_container("c1")
        assert (info.value.code, info.value.details) == ("NOT_FOUND", "container x not found")
        assert str(info.value) == "RemoveContainer: container x not found"
        agent.check(5)
    assert server.requests[0][1].container_id == "c1"
    assert list(server.requests[1][1].args) == ["-ef"]


def test_a_call_that_outlives_its_timeout_is_deadline_exceeded(server):
    with kagent.Agent(server.path, timeout=0.3) as agent:
        t0 = time.monotonic()
        with pytest.raises(kagent.AgentError) as info:
            agent.signal_process("c1", "", 9)
        assert info.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - t0 < 1.5
        agent.start_container("c1")  # the next call connects again


def test_nothing_listening_is_unavailable(tmp_path):
    path = str(tmp_path / "proxy.sock")
    with kagent.Agent(path) as agent:
        with pytest.raises(kagent.AgentError) as info:
            agent.start_container("c1")
        assert info.value.unreachable and info.value.code == "UNAVAILABLE"
        assert f"cannot reach the agent through kata-proxy at {path}" in str(info.value)
        with pytest.raises(kagent.AgentError) as info:
            agent.check(0.3)
        assert info.value.method == "Check" and info.value.unreachable


def test_check_waits_for_an_agent_that_comes_up(tmp_path):
    path = str(tmp_path / "proxy.sock")
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server.add_insecure_port(f"unix:{path}")
    threading.Timer(0.3, server.start).start()
    try:
        with kagent.Agent(path) as agent:
            agent.check(10)
    finally:
        server.stop(None)
