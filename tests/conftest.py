"""Session-wide fixtures shared by every tier that boots a guest (tests/vm, tests/network,
tests/reaper, tests/cri): ONE real guest image build per test session.

* ``guest_image`` (session): `build_image()` into a fresh temporary cache dir, so every session
  runs a REAL first build (about a minute) that all VM tests of every tier then share (fixtures
  of a root conftest are one instance per session; a fixture imported into several modules
  would be built once per module). Set ``KATA_PY_TEST_IMAGE_CACHE=DIR`` to use a persistent
  cache dir instead (development: the build then only happens when its inputs changed).
* ``figures``: lines like ``first build: 63.4 s`` printed in the terminal summary.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CACHE_ENV = "KATA_PY_TEST_IMAGE_CACHE"
_FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.write_sep("-", "VM tier figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def figures() -> list[str]:
    return _FIGURES


@pytest.fixture(scope="session")
def image_cache_dir():
    persistent = os.environ.get(CACHE_ENV)
    if persistent:
        yield persistent
        return
    path = tempfile.mkdtemp(prefix="kata-vm-images-", dir="/var/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_inputs():
    """The build inputs, gathered once: other engineers may edit the agent while a session runs."""
    from kata_runtime.image import Recipe, gather_inputs

    return gather_inputs(Recipe())


@pytest.fixture(scope="session")
def guest_image(image_cache_dir, guest_inputs, figures):
    from kata_runtime.image import build_image

    image = build_image(image_cache_dir, inputs=guest_inputs)
    figures.append(f"guest image {image.key[:24]}: {'first build' if image.built else 'cache hit'} "
                   f"{image.seconds:.1f} s" + "".join(f"\n    {t}: {s:.1f} s" for t, s in image.timings))
    return image
