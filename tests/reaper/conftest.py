"""Reaper tier: an unmodified containerd 1.6 and containerd-shim-runc-v2, driven with ``ctr``.

Fixtures:

* ``containerd`` (session): a daemon of our own (tests/support/containerd.py) with the busybox
  image (tests/support/oci_image.py) imported; stopped, and everything it made removed, at the end.
* ``ctr``: that daemon for one test; every task and container of the namespace is removed after
  the test (its daemon is started again first if the test killed it), except those in
  ``containerd.kept`` (a module's shared task, removed by its own fixture).
* ``own_containerd``: a private daemon for a test that kills containerd or a shim.
* ``image``: the imported image's name.
* ``runtime``: parametrized ``runc`` (the host's runc, the reference) and ``kata`` (the venv's
  kata-runtime given to the shim with ``--runc-binary``); ``kata`` is skipped while
  ``kata-runtime --version`` does not work; ``kata``: kata-runtime alone.

Every test here is marked ``reaper``; all are skipped without root, containerd, ctr, the runc shim
or runc.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containerd import KATA_RUNTIME, Containerd, kata_runtime_missing, missing_requirements
from tests.support.oci_image import build_busybox_image_tar

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Runtime:
    name: str  # "runc" or "kata"
    binary: str | None  # for ctr run --runc-binary; None = the shim's default runc

    def run_kwargs(self) -> dict:
        return {"runtime": self.binary}


def pytest_collection_modifyitems(config, items):
    reason = missing_requirements()
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(pytest.mark.reaper)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _start_with_image() -> tuple[Containerd, str]:
    """A new daemon with the busybox image imported: (daemon, image name)."""
    cd = Containerd.start()
    try:
        image = build_busybox_image_tar(cd.base / "busybox.tar")
        cd.import_image(image.path)
    except BaseException:
        cd.stop()
        raise
    return cd, image.name


@pytest.fixture(scope="session")
def _session_daemon():
    cd, name = _start_with_image()
    yield cd, name
    cd.stop()


@pytest.fixture(scope="session")
def containerd(_session_daemon) -> Containerd:
    return _session_daemon[0]


@pytest.fixture(scope="session")
def image(_session_daemon) -> str:
    return _session_daemon[1]


@pytest.fixture
def ctr(containerd):
    if containerd.popen is None or containerd.popen.poll() is not None:
        containerd.launch()
    yield containerd
    if containerd.popen.poll() is not None:
        sys.stdout.write(f"\n----- containerd died ({containerd.log_path}) -----\n{containerd.log_tail()}\n")
        containerd.launch()
    containerd.remove_all_containers(keep=containerd.kept)


@pytest.fixture
def own_containerd():
    """(Containerd, image name): a daemon only this test uses, then stopped and removed."""
    cd, name = _start_with_image()
    try:
        yield cd, name
    finally:
        cd.stop()


def _kata() -> Runtime:
    reason = kata_runtime_missing()
    if reason:
        pytest.skip(reason)
    return Runtime("kata", str(KATA_RUNTIME))


@pytest.fixture(params=["runc", "kata"])
def runtime(request) -> Runtime:
    return Runtime("runc", None) if request.param == "runc" else _kata()


@pytest.fixture
def kata() -> Runtime:
    """kata-runtime alone (for what runc has no counterpart of)."""
    return _kata()
