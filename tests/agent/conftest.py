"""Agent service tier: kata_agent's gRPC service run alone (python -m
kata_agent.standalone, real runc, real processes) on a temp unix socket, and a
grpc.aio client.

The server is a separate process (it becomes a child subreaper and owns
waitpid(-1); pytest must not). runc's --root and every bundle live in a temp
dir; at teardown every container is removed through the agent, then anything
left in that runc root is deleted with runc itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.agent.client import AgentServer  # noqa: E402
from tests.fixtures.rootfs import find_busybox  # noqa: E402


UNIT_MODULES = {"test_agent_units.py"}  # need neither root nor runc


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "runc containers need root"
    if shutil.which("runc") is None:
        return "runc not installed"
    if find_busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = missing_requirements()
    if not reason:
        return
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == here and path.name not in UNIT_MODULES:
            item.add_marker(pytest.mark.skip(reason=reason))


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
    from tests.agent.client import AgentClient

    client = AgentClient(agent_server)
    try:
        yield client
    finally:
        await client.close()
