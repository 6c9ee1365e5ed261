"""pytest fixtures of the process sandbox, imported by the tiers that use them (their conftest.py:
``from tests.support.fixtures import client, proxy, sandbox, sandbox_dir``).

* ``short_dir(prefix)``: makes a fixture of a fresh short directory under /tmp (unix socket paths
  are limited to 107 bytes), removed after the test; ``sandbox_dir`` is one;
* ``sandbox``: a real kata-agent in a ProcessSandbox (the runtime's driver) in it;
* ``proxy``: the real kata-proxy on the sandbox's kata.sock (tests.support.proxy);
* ``client``: the grpc.aio AgentClient on the proxy's socket.

Every process is one we started, stopped by pid at teardown. Logs (console.log, proxy.log) are
printed at teardown, so a failing test shows them.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid

import pytest

from tests.support.agent import AgentClient
from tests.support.processes import dump
from tests.support.proxy import start_proxy


def short_dir(prefix: str):
    """A fixture (named by the variable it is assigned to) that yields a fresh directory
    /tmp/<prefix>XXXXXXXX, short enough for unix socket paths, and removes it afterwards."""

    @pytest.fixture
    def fixture():
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        yield path
        shutil.rmtree(path, ignore_errors=True)

    return fixture


sandbox_dir = short_dir("ksb")


@pytest.fixture
async def sandbox(sandbox_dir):
    from kata_runtime.hypervisor import ProcessSandbox

    sb = ProcessSandbox(sandbox_dir, f"sb-{uuid.uuid4().hex[:12]}", log_level="debug")
    await sb.start()
    try:
        yield sb
    finally:
        await sb.stop()
        dump(sb.console_log_path, "console.log")


@pytest.fixture
async def proxy(sandbox):
    p = await asyncio.to_thread(start_proxy, sandbox.sandbox_dir, mux=sandbox.channel_socket_path,
                                sandbox_id=sandbox.sandbox_id, log_level="debug")
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
