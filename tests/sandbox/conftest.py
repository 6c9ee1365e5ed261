"""Process-sandbox tier fixtures: a real kata-agent in a ProcessSandbox, the real kata-proxy
connected to its kata.sock, and a grpc.aio client on the proxy's listen socket.

Every process is one we started, stopped by pid at teardown. Logs (console.log, proxy.log) are
printed at teardown, so a failing test shows them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kata_runtime.hypervisor import ProcessSandbox  # noqa: E402
from tests.sandbox.harness import AgentClient, dump, start_proxy  # noqa: E402


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the process sandbox needs root (mount/pid namespaces, runc)"
    for tool in ("unshare", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = missing_requirements()
    for item in items:
        if Path(str(item.fspath)).parent == here and "sandbox" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def sandbox_dir():
    """A short directory (unix socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ksb", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def sandbox(sandbox_dir):
    sb = ProcessSandbox(sandbox_dir, f"sb-{uuid.uuid4().hex[:12]}", log_level="debug")
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()
        dump(sb.console_log_path, "console.log")


@pytest.fixture
async def proxy(sandbox):
    p = await start_proxy(sandbox.channel_socket_path, sandbox.sandbox_dir, sandbox_id=sandbox.sandbox_id)
    try:
        yield p
    finally:
        p.stop()
        dump(p.log_path, "proxy.log")


@pytest.fixture
async def client(proxy):
    c = AgentClient(f"unix:{proxy.listen_socket}")
    try:
        yield c
    finally:
        await c.close()
