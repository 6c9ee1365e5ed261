"""Process-sandbox tier fixtures: a real kata-agent in a ProcessSandbox, the real kata-proxy
connected to its kata.sock, and a grpc.aio client on the proxy's listen socket
(tests/support/fixtures.py: ``sandbox_dir``, ``sandbox``, ``proxy``, ``client``).

Tests marked ``sandbox`` are skipped where the process sandbox cannot run (tests/support/
requirements.py: root, unshare, setsid, runc, a static busybox).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fixtures import client, proxy, sandbox, sandbox_dir  # noqa: F401  (fixtures)
from tests.support.requirements import process_sandbox, skip_items

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, process_sandbox, when=lambda item: "sandbox" in item.keywords)
