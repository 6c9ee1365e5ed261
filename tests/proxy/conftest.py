"""Fixtures for the kata-proxy tests: short temp dirs, the agent stand-in and the proxy as real
processes (stopped by pid at teardown; nothing else is touched)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.peers import proxy_harness  # noqa: E402


@pytest.fixture
def sockdir():
    """A short temporary directory for unix sockets (sun_path is 108 bytes)."""
    path = tempfile.mkdtemp(prefix="kp", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def procs():
    """Every process a test starts goes in this list; they are stopped at teardown."""
    started: list = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def peer(sockdir, procs):
    p = proxy_harness.start_peer(sockdir)
    procs.append(p)
    return p


@pytest.fixture
def proxy(sockdir, peer, procs):
    p = proxy_harness.start_proxy(sockdir, mux=peer.listen)
    procs.append(p)
    return p
