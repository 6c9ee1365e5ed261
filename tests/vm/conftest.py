"""VM tier fixtures: one real guest image build per test session, short sandbox dirs, figures.

* ``guest_image`` (session): `build_image()` into a fresh temporary cache dir, so every session
  runs a REAL first build (about a minute) that all VM tests then share. Set
  ``KATA_PY_TEST_IMAGE_CACHE=DIR`` to use a persistent cache dir instead (development: the
  build then only happens when its inputs changed).
* ``vm_dir``: a short directory under /tmp (unix socket paths are limited to 107 bytes).
* ``figures``: lines like ``first build: 63.4 s`` printed in the terminal summary.

Tests marked ``vm`` are skipped (with the reason) where a guest cannot be built or booted:
not root, or no qemu-system-x86_64, mmdebstrap, mke2fs, modinfo, kernel or static busybox.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.fixtures import short_dir
from tests.support.requirements import missing, skip_items

HERE = Path(__file__).parent
CACHE_ENV = "KATA_PY_TEST_IMAGE_CACHE"
TOOLS = ("qemu-system-x86_64", "mmdebstrap", "mke2fs", "modinfo", "chroot", "cpio")
_FIGURES: list[str] = []


def missing_requirements() -> str | None:
    from kata_runtime.image import ImageError
    from kata_runtime.image.initrd import find_busybox
    from kata_runtime.image.kernel import find_kernel

    reason = missing(root="the VM tier needs root (mmdebstrap, chroot, QEMU's 9p passthrough)", tools=TOOLS)
    if reason:
        return reason
    try:
        find_kernel()
        find_busybox()
    except ImageError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, missing_requirements, when=lambda item: "vm" in item.keywords)


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


vm_dir = short_dir("kvm")
