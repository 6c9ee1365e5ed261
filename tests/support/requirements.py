"""The root/tool skip marker: why a tier cannot run on this machine, and skipping its tests.

    reason = missing(root="the process sandbox needs root (...)", tools=("unshare", "runc"), busybox=True)

    @requires(root="mknod needs root", tools=("setpriv",))    # one test
    def test_...

    # a tier's conftest.py
    def pytest_collection_modifyitems(config, items):
        skip_items(items, HERE, process_sandbox, when=lambda item: "sandbox" in item.keywords)

A reason is one line (what is missing and, where it helps, what to install); None means the
tier can run. Requirements are looked up only when a test that needs them was collected.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def missing(*, root: str | None = None, tools=(), tool_hint: str = "", busybox: bool = False,
            modules=()) -> str | None:
    """Why something cannot run here, or None.

    ``root``: the reason root is needed (returned when we are not root); ``tools``: commands that
    must be on PATH ("<tool> not installed", then ``tool_hint``); ``busybox``: a static busybox
    (for container rootfs); ``modules``: Python modules that must import.
    """
    if root is not None and os.geteuid() != 0:
        return root
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed" + (f" ({tool_hint})" if tool_hint else "")
    if busybox:
        from tests.support.rootfs import find_busybox

        if find_busybox() is None:
            return "no static busybox (apt-get install busybox-static)"
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install -e .)"
    return None


def requires(**needs):
    """The skip marker of a test (or, as ``pytestmark``, a module): skipped with
    ``missing(**needs)``'s reason where that gives one."""
    import pytest

    reason = missing(**needs)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def process_sandbox() -> str | None:
    """The process sandbox (kata-agent in fresh namespaces, runc, busybox containers)."""
    return missing(root="the process sandbox needs root (mount/pid namespaces, runc, bind mounts)",
                   tools=("unshare", "setsid", "runc"), busybox=True)


def skip_items(items, here: Path, requirement, when=None) -> None:
    """Mark the collected tests of directory ``here`` (those ``when(item)`` selects; all by
    default) skipped with ``requirement()``'s reason, if it gives one. ``requirement`` is called
    only when such a test was collected."""
    import pytest

    mine = [item for item in items
            if Path(str(item.fspath)).parent == here and (when is None or when(item))]
    reason = requirement() if mine else None
    if reason:
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=reason))
