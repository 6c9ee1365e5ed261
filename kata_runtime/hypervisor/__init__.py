"""Hypervisor drivers: one sandbox's guest, started and stopped by the runtime.

* ``process`` — `ProcessSandbox`: kata-agent as a host process in new namespaces, for
  tests and development. NO VM isolation.
* ``qemu`` — a QEMU guest with the same interface (the VM issue adds
  ``kata_runtime/hypervisor/qemu.py`` and its line in :data:`DRIVERS`).

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
    "qemu": None,
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
    raise AttributeError(name)


__all__ = ["DRIVERS", "Hypervisor", "HypervisorError", "ProcessSandbox", "driver"]
