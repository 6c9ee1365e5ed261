"""What the VM tiers need to build and boot a guest: the host requirements, checked once.

``missing_requirements()`` -> None, or the one-line reason the VM tier is skipped here (not root,
or no qemu-system-x86_64, mmdebstrap, mke2fs, modinfo, chroot, cpio, kernel or static busybox).
The session's one guest image build is the ``guest_image`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import functools

from tests.support.requirements import missing

TOOLS = ("qemu-system-x86_64", "mmdebstrap", "mke2fs", "modinfo", "chroot", "cpio")


@functools.cache
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
