"""VM tier fixtures: short sandbox dirs; the skip of ``vm`` tests where no guest can be built.

The session's one guest image build (``guest_image``, ``image_cache_dir``, ``guest_inputs``) and
the ``figures`` summary live in tests/conftest.py, shared with every tier that boots a guest.

* ``vm_dir``: a short directory under /tmp (unix socket paths are limited to 107 bytes).

Tests marked ``vm`` are skipped (with the reason) where a guest cannot be built or booted:
not root, or no qemu-system-x86_64, mmdebstrap, mke2fs, modinfo, kernel or static busybox
(tests/support/guest.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fixtures import short_dir
from tests.support.guest import missing_requirements
from tests.support.requirements import skip_items

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, missing_requirements, when=lambda item: "vm" in item.keywords)


vm_dir = short_dir("kvm")
