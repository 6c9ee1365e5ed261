"""runc's default OCI bundle configuration, byte for byte (what `runc spec` writes).

`kata-runtime spec` must write exactly what the host's `runc spec` writes, so
that a bundle made with either runtime works with both. Source: runc 1.1's
`libcontainer/specconv` (`Example()` and `ToRootless()`), as written by Debian
bookworm's runc 1.1.5 (runtime-spec 1.0.2-dev); tests compare our bytes with
the installed runc's.

Stdlib only and import-cheap: the `spec` command loads this module and nothing
else of the runtime.
"""

from __future__ import annotations

import json
import os

#: The OCI runtime-spec version kata-runtime writes and reports
#: (`ociVersion` of the default spec; "OCI specs" in `kata-runtime --version`).
OCI_SPEC_VERSION = "1.0.2-dev"

#: The file name of a bundle's configuration (runc's `specConfig`).
SPEC_CONFIG = "config.json"

_DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]

_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _mount(destination: str, type_: str, source: str, options: list[str] | None = None) -> dict:
    """One `mounts[]` entry in the runtime-spec's field order (options omitted when None)."""
    entry = {"destination": destination, "type": type_, "source": source}
    if options is not None:
        entry["options"] = options
    return entry


def _default_mounts() -> list[dict]:
    """The seven mounts of runc's example spec, in its order."""
    return [
        _mount("/proc", "proc", "proc"),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts",
               ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ]


def example_spec() -> dict:
    """runc's default spec (specconv.Example) as a fresh dict in runc's key order.

    Keys are in the order Go's encoding/json writes the specs-go structs, so
    `marshal(example_spec())` is byte-identical to `runc spec`'s file.
    """
    return {
        "ociVersion": OCI_SPEC_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {kind: list(_DEFAULT_CAPABILITIES)
                             for kind in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": _default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(_MASKED_PATHS),
            "readonlyPaths": list(_READONLY_PATHS),
        },
    }


def to_rootless(spec: dict, euid: int, egid: int) -> dict:
    """Turn `spec` into runc's rootless variant (specconv.ToRootless), in place; returns it.

    As runc 1.1 does: drop the network namespace and add a user namespace
    (at the end), map container root to `euid`/`egid` (size 1), bind the
    host's /sys read-only (`rbind`) instead of mounting sysfs, drop devpts'
    `gid=` option (no gid 5 inside a single-id mapping) and drop
    `linux.resources` (no cgroup settings). `uidMappings`/`gidMappings` come
    before `namespaces`, as in the specs-go struct.
    """
    linux = spec["linux"]
    namespaces = [ns for ns in linux["namespaces"] if ns["type"] not in ("network", "user")]
    namespaces.append({"type": "user"})
    rebuilt = {
        "uidMappings": [{"containerID": 0, "hostID": euid, "size": 1}],
        "gidMappings": [{"containerID": 0, "hostID": egid, "size": 1}],
    }
    for key, value in linux.items():
        if key == "namespaces":
            rebuilt[key] = namespaces
        elif key not in ("resources", "uidMappings", "gidMappings"):
            rebuilt[key] = value
    spec["linux"] = rebuilt
    spec["mounts"] = [_rootless_mount(m) for m in spec["mounts"]]
    return spec


def _rootless_mount(mount: dict) -> dict:
    """A mount as runc's rootless conversion leaves it."""
    if mount["destination"] == "/sys":
        return _mount("/sys", "none", "/sys", ["rbind", "nosuid", "noexec", "nodev", "ro"])
    options = mount.get("options")
    if options is None:
        return mount
    return {**mount, "options": [o for o in options if not o.startswith("gid=")]}


def default_spec(rootless: bool = False, euid: int | None = None, egid: int | None = None) -> dict:
    """The spec `runc spec [--rootless]` writes; ids default to this process's effective ones."""
    spec = example_spec()
    if rootless:
        to_rootless(spec, os.geteuid() if euid is None else euid, os.getegid() if egid is None else egid)
    return spec


def marshal(spec: dict) -> bytes:
    """JSON exactly as Go's `json.MarshalIndent(v, "", "\\t")`: tab indent, no final newline.

    Go escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings and writes other
    non-ASCII as UTF-8; those characters only ever occur inside JSON strings,
    so replacing them in the whole text is exact.
    """
    text = json.dumps(spec, indent="\t", ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode("utf-8")


def write_spec(bundle: str | os.PathLike | None = None, rootless: bool = False) -> str:
    """Write the default spec to `<bundle>/config.json` as runc does; returns the path.

    Never overwrites: raises `FileExistsError` with runc's message
    "File config.json exists. Remove it first" when the file exists; a
    dangling symlink of that name is refused too (EEXIST from O_EXCL), where
    runc would write through it. A missing bundle raises `FileNotFoundError`
    with runc's words ("chdir <bundle>: no such file or directory"). The file
    is created with mode 0666 minus the umask, as runc's
    os.WriteFile(..., 0o666).
    """
    directory = os.fspath(bundle) if bundle else "."
    if not os.path.isdir(directory):
        reason = "not a directory" if os.path.exists(directory) else "no such file or directory"
        raise FileNotFoundError(f"chdir {directory}: {reason}")
    path = os.path.join(directory, SPEC_CONFIG)
    if os.path.exists(path):
        raise FileExistsError(f"File {SPEC_CONFIG} exists. Remove it first")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(marshal(default_spec(rootless)))
    return path
