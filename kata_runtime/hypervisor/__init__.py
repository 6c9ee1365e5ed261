"""Hypervisor drivers: one sandbox's guest, started and stopped by the runtime.

* ``process`` — `ProcessSandbox`: kata-agent as a host process in new
  namespaces, for tests and development. NO VM isolation.
* ``qemu`` — (the runtime issue) a QEMU guest with the same interface.

See base.py for the interface and README.md for the process sandbox.
"""

from kata_runtime.hypervisor.base import Hypervisor, HypervisorError
from kata_runtime.hypervisor.process import ProcessSandbox

DRIVERS: dict[str, type[Hypervisor]] = {ProcessSandbox.kind: ProcessSandbox}


def driver(kind: str) -> type[Hypervisor]:
    """The driver class for a configuration's `hypervisor = "<kind>"`."""
    try:
        return DRIVERS[kind]
    except KeyError:
        raise HypervisorError(f"unknown hypervisor {kind!r} (known: {', '.join(sorted(DRIVERS))})") from None


__all__ = ["DRIVERS", "Hypervisor", "HypervisorError", "ProcessSandbox", "driver"]
