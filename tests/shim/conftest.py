"""Process-tier fixtures of the kata-shim tests.

The sandbox (kata-agent in a ProcessSandbox) and the real kata-proxy are tests/support/fixtures.py's.
On top of them:

* ``agent``: tests/support/agent.py's ``Agent`` on the proxy socket, CreateSandbox already sent: it
  creates/starts containers and execs processes the way kata-runtime does (through the runtime's
  own client), and starts the real kata-shim as a subprocess (``agent.shim(...)``).
* ``kata1x``: the same interface on tests/peers/kata1x_agent.py, a peer that keeps the
  Kata 1.x agent's rules (WaitProcess forgets the process; later reads: NOT_FOUND).  No
  sandbox, no proxy: the shim talks gRPC to it directly, and its processes run on the host.
* ``peer``: parametrized over both (ids ``kata-agent`` and ``kata1x``), for the tests of the
  shim's exit path, which must hold against either agent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agent import Agent, Kata1xPeer
from tests.support.fixtures import proxy, sandbox, sandbox_dir  # noqa: F401  (fixtures)
from tests.support.requirements import process_sandbox, skip_items

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, process_sandbox, when=lambda item: "sandbox" in item.keywords)


@pytest.fixture
async def agent(sandbox, proxy):
    a = Agent(sandbox, proxy)
    try:
        a.create_sandbox()
        yield a
    finally:
        a.close()


@pytest.fixture
def kata1x(sandbox_dir):
    a = Kata1xPeer(sandbox_dir)
    try:
        a.create_sandbox()
        yield a
    finally:
        a.close()


@pytest.fixture(params=[pytest.param("kata-agent", marks=pytest.mark.sandbox), "kata1x"])
def peer(request):
    """The agent behind the shim: ours (sandbox + proxy) or the Kata 1.x peer."""
    return request.getfixturevalue("agent" if request.param == "kata-agent" else "kata1x")
