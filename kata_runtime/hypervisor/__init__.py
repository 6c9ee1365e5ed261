"""Hypervisor drivers: one sandbox's guest, started and stopped by the runtime.

* ``process`` — `ProcessSandbox`: kata-agent as a host process in new namespaces, for
  tests and development. NO VM isolation.
* ``qemu`` — `QemuHypervisor`: the sandbox's own guest kernel in a QEMU VM (KVM where a
  guest can boot, else TCG); see qemu.py.

Drivers are imported only when used (``driver(kind)``), so commands that never start or
stop a guest do not pay for them. See base.py for the interface and README.md for the
process sandbox.
"""

from __future__ import annotations

import importlib

from kata_runtime.hypervisor.base import Hypervisor, HypervisorError

#: configuration name -> "module:Class" of its driver (None: known, not built yet).
DRIVERS: dict[str, str | None] = {
    "process": "kata_runtime.hypervisor.process:ProcessSandbox",
    "qemu": "kata_runtime.hypervisor.qemu:QemuHypervisor",
}


def driver(kind: str) -> type[Hypervisor]:
    """The driver class for a configuration's ``hypervisor = "<kind>"``; HypervisorError if none."""
    if kind not in DRIVERS:
        raise HypervisorError(f"unknown hypervisor {kind!r} (known: {', '.join(sorted(DRIVERS))})")
    target = DRIVERS[kind]
    if target is None:
        raise HypervisorError(f"the {kind} hypervisor driver is not built yet in this version of kata-py "
                              f"(use hypervisor = \"process\" in [runtime])")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    if name == "ProcessSandbox":
        return driver("process")
    if name == "QemuHypervisor":
        return driver("qemu")
    raise AttributeError(name)


__all__ = ["DRIVERS", "Hypervisor", "HypervisorError", "ProcessSandbox", "QemuHypervisor", "driver"]
