"""The real kata-agent serves gRPC without grpcio: kata-agent (its CLI, listening on a channel
socket) behind the real kata-proxy answers calls from kata_grpc's client, then, once the proxy
has gone and the agent has ended, reports the modules it had loaded: no grpc, no *_grpc stub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from kata_grpc.client import Channel
from kata_grpc.protocol import FAILED_PRECONDITION, RpcError
from katapb import agent_pb2, health_pb2
from tests.support.processes import REPO, wait_for
from tests.support.proxy import start_proxy

pytestmark = pytest.mark.timeout(120)

#: kata-agent's own main(), then the modules it loaded (after it served and ended)
AGENT = (
    "import json, sys\n"
    "from kata_agent import cli\n"
    "rc = cli.main(sys.argv[1:])\n"
    "grpc = sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.endswith('_pb2_grpc'))\n"
    "print(json.dumps({'rc': rc, 'grpc': grpc, 'kata_grpc': 'kata_grpc.aio' in sys.modules}), flush=True)\n"
)


def calls_through(proxy_socket: str) -> dict:
    ch = Channel(proxy_socket, connect_timeout=5)
    try:
        check = health_pb2.HealthCheckResponse.FromString(
            ch.unary("/grpc.Health/Check", health_pb2.CheckRequest().SerializeToString(), timeout=30))
        details = agent_pb2.GuestDetailsResponse.FromString(
            ch.unary("GetGuestDetails", agent_pb2.GuestDetailsRequest().SerializeToString(), timeout=30))
        with pytest.raises(RpcError) as info:
            ch.unary("ReadStdout", agent_pb2.ReadStreamRequest(container_id="c", len=1).SerializeToString(),
                     timeout=30)
    finally:
        ch.close()
    return {"check": check.status, "version": details.agent_details.version, "no_sandbox": info.value}


def test_the_agent_serves_through_the_proxy_without_grpcio():
    d = tempfile.mkdtemp(prefix="knogrpc", dir="/tmp")
    channel = os.path.join(d, "kata.sock")
    with open(os.path.join(d, "agent.log"), "wb") as log:
        agent = subprocess.Popen([sys.executable, "-c", AGENT, "--channel-socket", channel,
                                  "--state-dir", os.path.join(d, "state"), "--log", "debug"],
                                 cwd=str(REPO), stdout=subprocess.PIPE, stderr=log)
    proxy = None
    try:
        wait_for(lambda: os.path.exists(channel) or agent.poll() is not None, 30, "the agent's channel socket")
        proxy = start_proxy(d, mux=channel)
        got = calls_through(proxy.listen)
        proxy.stop()  # the host hangs up: a socket channel ends the agent
        out, _ = agent.communicate(timeout=30)
    finally:
        if proxy is not None:
            proxy.stop()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent_log = open(os.path.join(d, "agent.log")).read()
        shutil.rmtree(d, ignore_errors=True)
    assert got["check"] == health_pb2.HealthCheckResponse.SERVING
    assert got["version"]
    assert got["no_sandbox"].code == FAILED_PRECONDITION and "CreateSandbox" in got["no_sandbox"].message
    report = json.loads(out.decode().splitlines()[-1]) if out.strip() else {}
    assert report.get("rc") == 0, agent_log[-3000:]
    assert report["kata_grpc"] and report["grpc"] == []
