"""Configuration of kata-agent's service half (gRPC service, containers, processes).

`AgentConfig` is built by the agent's CLI (kata_agent/cli.py) from flags and the
kernel command line, and handed to `kata_agent.server.start_grpc_server` (the Sandbox of
kata_agent.sandbox reads it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Where the 9p share (mount tag "kataShared") is mounted in the guest, and
# therefore where each container's bundle lives: <SHARED_MOUNT>/<container id>/.
KATA_SHARED_DIR = "/run/kata-containers/shared/containers/"


@dataclass
class AgentConfig:
    # runc binary (name looked up on PATH, or an absolute path).
    runc: str = "runc"
    # Agent state: runc's --root is <state_dir>/runc, consoles and scratch
    # files of each container live under <state_dir>/containers/<id>/.
    state_dir: str = "/run/kata-agent"
    # Process sandbox only: a Storage {driver "9p", source "kataShared"} is
    # satisfied by BIND-mounting this host directory at its mount_point
    # instead of mounting 9p. None (a VM): mount 9p for real.
    shared_dir_source: str | None = None
    # Bound of each stdout/stderr buffer kept by the agent. When it is full the
    # agent stops reading that pipe (the process blocks; nothing is dropped).
    stream_buffer_limit: int = 1 << 20
    # Largest chunk a single read(2) of a container pipe asks for.
    read_chunk: int = 256 << 10
    # Python logging level name (debug, info, warning, error).
    log_level: str = "info"
    # Cgroup parent used when a spec has no Linux.CgroupsPath: runc gets
    # "<cgroup_parent>/<container id>". Relative = below the agent's own
    # cgroup in each hierarchy (runc's rule), so containers never escape it.
    cgroup_parent: str = "kata"
    # Kernel pipe size of container stdio pipes (F_SETPIPE_SZ; 0 = default
    # 64 KiB). Like the original agent.container_pipe_size.
    container_pipe_size: int = 1 << 20
    # SetGuestDateTime and OnlineCPUMem touch machine-wide state: None = only
    # in a VM (shared_dir_source is None); the process sandbox shares the
    # host's clock and CPUs, so they are no-ops there.
    manage_machine: bool | None = None
    # runc --no-pivot (needed when the guest root is an initramfs).
    no_pivot_root: bool = False
    # Where the agent sees the shared directory (the 9p share, mounted there by
    # CreateSandbox's Storage): each container's bundle is
    # <shared_mount>/<container id>/, its rootfs <bundle>/rootfs, and the agent
    # writes <bundle>/config.json.
    shared_mount: str = KATA_SHARED_DIR
    # Sandbox-wide changes: sethostname and the Storage mounts. The process
    # sandbox runs the agent in its own uts/mount namespaces, so these are safe
    # there; the service run alone on a host (tests, bench) sets this False so
    # nothing global is touched (shared_mount is then a plain directory).
    manage_system: bool = True
    # Version string reported by Health.Version.
    agent_version: str = "kata-py-0.1.0"
    # Extra environment for runc invocations (rarely needed).
    runc_env: dict[str, str] = field(default_factory=dict)

    @property
    def machine_managed(self) -> bool:
        if self.manage_machine is None:
            return self.shared_dir_source is None and self.manage_system
        return self.manage_machine

    @property
    def runc_root(self) -> str:
        return os.path.join(self.state_dir, "runc")

    def container_state_dir(self, container_id: str) -> str:
        return os.path.join(self.state_dir, "containers", container_id)
