"""Runtime tests: unit tests of configuration, state and spec translation, and process-tier
tests of the whole kata-runtime CLI (marked ``sandbox``: real agent, proxy and shims in the
process sandbox; skipped without root, unshare, setsid, runc or a static busybox)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.oci import make_bundle
from tests.support.requirements import process_sandbox, skip_items
from tests.support.runtime import Kata, Runc, assert_clean, write_config

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, process_sandbox, when=lambda item: "sandbox" in item.keywords)


@pytest.fixture
def new_id():
    """A fresh container id (unique on the host: cgroups and /run/vc/vm are host-wide)."""
    return lambda prefix="kt": f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kata(tmp_path):
    """kata-runtime with a private --root and configuration; every container it created is
    deleted (--force) at teardown and must leave nothing behind."""
    cli = Kata(tmp_path / "root", write_config(tmp_path / "configuration.toml"), tmp_path / "kata.log")
    yield cli
    cli.cleanup()
    for cid in cli.ids:
        assert_clean(cli, cid)


@pytest.fixture
def runc(tmp_path):
    cli = Runc(tmp_path / "runc-root", tmp_path / "runc.log")
    yield cli
    cli.cleanup()


@pytest.fixture
def bundle(tmp_path):
    """A busybox bundle whose process sleeps (change it with tests.support.oci.set_process)."""
    return make_bundle(tmp_path / "bundle", ["sleep", "1000"])
