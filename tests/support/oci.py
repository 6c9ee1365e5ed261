"""OCI specs of the tests: as katapb messages (what kata-runtime sends the agent) and as bundles
(what a caller gives kata-runtime).

    busybox_spec(container_id, args, ...) -> oci_pb2.Spec     # CreateContainer's OCI
    process(args, ...) -> oci_pb2.Process                       # ExecProcess's process
    shared_storage() -> agent_pb2.Storage                       # CreateSandbox's 9p share (the runtime's own)
    make_bundle(path, args, ...) -> path                        # <path>/config.json + a busybox rootfs

Root.Path is where the agent sees the container's rootfs once CreateSandbox has mounted the 9p
share (kataShared) at /run/kata-containers/shared/containers/: <that>/<container id>/rootfs
(kata_oci.guest_rootfs), which the host placed at <sandbox>/shared/<container id>/rootfs. /dev is
a tmpfs (mknod is impossible on 9p).
"""

from __future__ import annotations

import json
from pathlib import Path

from kata_oci import GUEST_SHARED_DIR, guest_rootfs
from kata_runtime import sandbox as runtime_sandbox
from tests.support.rootfs import build_busybox_rootfs

SHARED_MOUNT = GUEST_SHARED_DIR


def shared_storage():
    """CreateSandbox's Storage for the 9p share as a katapb message: the runtime's own
    (kata_runtime.sandbox.shared_storage, which encodes it without protobuf), decoded."""
    from katapb import agent_pb2

    return agent_pb2.Storage.FromString(runtime_sandbox.shared_storage())
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm")
#: The capabilities of a katapb process (docker's default set).
CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
        "CAP_AUDIT_WRITE")
#: The capabilities of a bundle's process (`runc spec`'s).
BUNDLE_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


# ------------------------------------------------------------------ katapb messages


def process(args, *, terminal=False, cwd="/", env=DEFAULT_ENV, uid=0, gid=0):
    from katapb import oci_pb2

    caps = list(CAPS)
    return oci_pb2.Process(
        Terminal=terminal,
        User=oci_pb2.User(UID=uid, GID=gid),
        Args=list(args),
        Env=list(env),
        Cwd=cwd,
        Capabilities=oci_pb2.LinuxCapabilities(Bounding=caps, Effective=caps, Inheritable=caps, Permitted=caps),
        NoNewPrivileges=True,
    )


def busybox_spec(container_id: str, args, *, terminal=False, hostname="container", readonly=False,
                 resources=None):
    """``resources``: an oci_pb2.LinuxResources, or None."""
    from katapb import oci_pb2

    mounts = [
        oci_pb2.Mount(destination="/proc", source="proc", type="proc", options=["nosuid", "noexec", "nodev"]),
        oci_pb2.Mount(destination="/dev", source="tmpfs", type="tmpfs",
                      options=["nosuid", "strictatime", "mode=755", "size=65536k"]),
        oci_pb2.Mount(destination="/dev/pts", source="devpts", type="devpts",
                      options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        oci_pb2.Mount(destination="/dev/shm", source="shm", type="tmpfs",
                      options=["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        oci_pb2.Mount(destination="/sys", source="sysfs", type="sysfs", options=["nosuid", "noexec", "nodev", "ro"]),
        oci_pb2.Mount(destination="/tmp", source="tmpfs", type="tmpfs", options=["nosuid", "nodev", "mode=1777"]),
    ]
    linux = oci_pb2.Linux(
        Namespaces=[oci_pb2.LinuxNamespace(Type=t) for t in ("pid", "ipc", "uts", "mount")],
        MaskedPaths=["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        ReadonlyPaths=["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    )
    if resources is not None:
        linux.Resources.CopyFrom(resources)
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=process(args, terminal=terminal),
        Root=oci_pb2.Root(Path=guest_rootfs(container_id), Readonly=readonly),
        Hostname=hostname,
        Mounts=mounts,
        Linux=linux,
    )


# ------------------------------------------------------------------ bundles


def make_bundle(path, args, *, terminal: bool = False, console_size=None, annotations=None,
                readonly: bool = False, hostname: str = "kata-test") -> Path:
    """A bundle as `runc spec` makes it (busybox rootfs), with ``args`` as the process."""
    path = Path(path)
    build_busybox_rootfs(path / "rootfs")
    process = {"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": list(args), "env": list(DEFAULT_ENV),
               "cwd": "/", "capabilities": {k: BUNDLE_CAPS for k in ("bounding", "effective", "permitted", "ambient")},
               "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True}
    if console_size:
        process["consoleSize"] = {"height": console_size[0], "width": console_size[1]}
    config = {
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": "rootfs", "readonly": readonly},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if annotations:
        config["annotations"] = dict(annotations)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def set_process(bundle: Path, **changes) -> None:
    """Change fields of a bundle's config.json ``process``."""
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(changes)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
