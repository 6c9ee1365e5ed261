"""Runtime tests: unit tests of configuration, state and spec translation, and process-tier
tests of the whole kata-runtime CLI (marked ``sandbox``: real agent, proxy and shims in the
process sandbox; skipped without root, unshare, setsid, runc or a static busybox)."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fixtures.rootfs import find_busybox  # noqa: E402
from tests.runtime.harness import Kata, Runc, assert_clean, make_bundle, write_config  # noqa: E402


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the process sandbox needs root (mount/pid namespaces, runc, bind mounts)"
    for tool in ("unshare", "setsid", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if find_busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = missing_requirements()
    for item in items:
        if Path(str(item.fspath)).parent == here and "sandbox" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


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
    """A busybox bundle whose process sleeps (change it with harness.set_process)."""
    return make_bundle(tmp_path / "bundle", ["sleep", "1000"])
