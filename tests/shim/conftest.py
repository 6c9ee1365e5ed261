"""Process-tier fixtures of the kata-shim tests.

The sandbox (kata-agent in a ProcessSandbox) and the real kata-proxy come from
tests/sandbox/conftest.py (reused, not duplicated).  On top of them:

* ``agent``: tests/shim/harness.py's ``Agent`` on the proxy socket, CreateSandbox
  already sent: it creates/starts containers and execs processes the way
  kata-runtime will (the runtime itself is a later issue), and starts the real
  kata-shim as a subprocess (``agent.shim(...)``).
* ``kata1x``: the same interface on tests/peers/kata1x_agent.py, a peer that keeps the
  Kata 1.x agent's rules (WaitProcess forgets the process; later reads: NOT_FOUND).  No
  sandbox, no proxy: the shim talks gRPC to it directly, and its processes run on the host.
* ``peer``: parametrized over both (ids ``kata-agent`` and ``kata1x``), for the tests of the
  shim's exit path, which must hold against either agent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.sandbox.conftest import (  # noqa: E402,F401  (fixtures, re-exported for tests/shim)
    missing_requirements, proxy, sandbox, sandbox_dir)
from tests.shim.harness import Agent, Kata1xPeer  # noqa: E402

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    reason = missing_requirements()
    for item in items:
        if Path(str(item.fspath)).parent == HERE and "sandbox" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


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
