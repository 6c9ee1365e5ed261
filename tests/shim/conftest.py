"""Process-tier fixtures of the kata-shim tests.

The sandbox (kata-agent in a ProcessSandbox) and the real kata-proxy come from
tests/sandbox/conftest.py (reused, not duplicated).  On top of them:

* ``agent``: tests/shim/harness.py's ``Agent`` on the proxy socket, CreateSandbox
  already sent: it creates/starts containers and execs processes the way
  kata-runtime will (the runtime itself is a later issue), and starts the real
  kata-shim as a subprocess (``agent.shim(...)``).
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
from tests.shim.harness import Agent  # noqa: E402

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

