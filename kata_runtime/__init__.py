"""kata-runtime: the runc-compatible OCI command line of kata-py (see README.md at the top).

Layout: ``cli/`` (one small module per command: flags and a thin action) over the library
that owns the work: ``config`` (configuration.toml), ``state`` (the per-container and
per-sandbox state store), ``sandbox`` / ``container`` (lifecycle), ``agent`` (gRPC client),
``proxy`` / ``shim`` (the processes the runtime spawns), ``console`` (ptys and the console
socket) and ``hypervisor/`` (drivers: ``qemu``, and ``process`` for tests). What each module owns:
kata_runtime/README.md.
"""

__version__ = "0.1.0"
