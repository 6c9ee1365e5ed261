"""CRI tier: an unmodified containerd 1.6 with its CRI plugin, CNI's bridge/host-local plugins
and kata-runtime as a runtime handler, driven by a small CRI v1 client (what the kubelet does).

Each test module starts ONE daemon (tests/cri/harness.py: its own temp dir and network namespace)
for all its tests and stops it at the end; after each test every pod still known to CRI is
stopped and removed (a failed test does not leave pods for the next). Every test here is marked
``reaper`` and skipped, with the reason, without root, containerd, runc, util-linux, iproute2 or
the CNI plugins; tests of kata-runtime are skipped while its CLI does not work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cri.harness import CriContainerd, missing_requirements
from tests.support.containerd import kata_runtime_missing

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if Path(str(item.fspath)).parent == HERE]
    reason = missing_requirements() if mine else None
    for item in mine:
        item.add_marker(pytest.mark.reaper)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def start_daemon(handlers: dict[str, dict | None]) -> CriContainerd:
    """A CriContainerd with ``handlers``; the kata ones skip the test when kata-runtime's CLI
    does not work yet."""
    if any(sections is not None for sections in handlers.values()):
        reason = kata_runtime_missing()
        if reason:
            pytest.skip(reason)
    return CriContainerd.start(handlers)


@pytest.fixture(autouse=True)
def _no_pods_after_the_test(request):
    """After each test: stop and remove every pod the module's daemon still has (via CRI)."""
    yield
    if "cri" in request.fixturenames:
        request.getfixturevalue("cri").remove_pods()
