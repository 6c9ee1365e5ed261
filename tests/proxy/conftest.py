"""Fixtures for the kata-proxy tests: short temp dirs, the agent stand-in and the proxy as real
processes (tests/support/proxy.py; stopped by pid at teardown; nothing else is touched). Tests
marked ``sandbox`` (the real agent) are skipped where the process sandbox cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fixtures import short_dir
from tests.support.proxy import start_peer, start_proxy
from tests.support.requirements import process_sandbox, skip_items

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, process_sandbox, when=lambda item: "sandbox" in item.keywords)


sockdir = short_dir("kp")  # for unix sockets (sun_path is 108 bytes)


@pytest.fixture
def procs():
    """Every process a test starts goes in this list; they are stopped at teardown."""
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def peer(sockdir, procs):
    p = start_peer(sockdir)
    procs.append(p)
    return p


@pytest.fixture
def proxy(sockdir, peer, procs):
    p = start_proxy(sockdir, mux=peer.listen)
    procs.append(p)
    return p
