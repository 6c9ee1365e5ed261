"""Agent service tier: kata_agent's gRPC service run alone (python -m
kata_agent.standalone, real runc, real processes) on a temp unix socket, and a
grpc.aio client (tests/support/agent.py: AgentServer, AgentClient).

The server is a separate process (it becomes a child subreaper and owns
waitpid(-1); pytest must not). runc's --root and every bundle live in a temp
dir; at teardown every container is removed through the agent, then anything
left in that runc root is deleted with runc itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.agent import AgentClient, AgentServer
from tests.support.requirements import missing, skip_items

HERE = Path(__file__).parent
UNIT_MODULES = {"test_agent_units.py", "test_agent_domain_units.py"}  # need neither root nor runc


def missing_requirements() -> str | None:
    return missing(root="runc containers need root", tools=("runc",), busybox=True)


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, missing_requirements, when=lambda item: Path(str(item.fspath)).name not in UNIT_MODULES)


@pytest.fixture(scope="session")
def agent_server():
    """One agent for the whole session, with its sandbox created."""
    server = AgentServer()
    try:
        server.create_sandbox()
        yield server
    finally:
        server.stop()
        left = server.leftover_containers()
        if os.environ.get("KATA_TEST_KEEP_LOGS"):
            print(Path(server.log_path).read_text())
        server.cleanup()
        assert not left, f"containers left behind: {left}"


@pytest.fixture
async def agent(agent_server):
    client = AgentClient(agent_server)
    try:
        yield client
    finally:
        await client.close()
