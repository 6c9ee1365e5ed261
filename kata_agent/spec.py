"""The container spec as runc runs it in the guest.

The translation katapb (oci.proto, CamelCase Go names) -> OCI JSON is kata_oci's
``message_to_oci``, one naming rule with the runtime's opposite direction (``oci_name``).
``prepare_spec`` then adjusts a container spec to the guest (rootfs under the bundle,
namespaces, cgroups path, default mounts); ``process_to_oci`` checks an exec'd process.
"""

from __future__ import annotations

import logging
import os
import stat

from kata_oci.spec import message_to_oci, oci_name  # noqa: F401  (oci_name: the rule message_to_oci applies)

log = logging.getLogger("kata_agent.spec")

OCI_VERSION = "1.0.2"


class SpecError(ValueError):
    """The spec cannot be run (INVALID_ARGUMENT)."""


DEFAULT_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
]

_NAMESPACE_TYPES = {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"}


def process_to_oci(proc_pb) -> dict:
    """ExecProcess / init Process -> OCI process JSON (validated)."""
    if proc_pb is None:
        raise SpecError("the process is missing")
    proc = message_to_oci(proc_pb)
    check_process(proc)
    return proc


def check_process(proc: dict) -> None:
    args = proc.get("args") or []
    if not args or not args[0]:
        raise SpecError("Process.Args is empty: nothing to run")
    cwd = proc.get("cwd") or "/"
    if not cwd.startswith("/"):
        raise SpecError(f"Process.Cwd {cwd!r} must be an absolute path")
    proc["cwd"] = cwd
    proc.setdefault("user", {}).setdefault("uid", 0)
    proc["user"].setdefault("gid", 0)
    cs = proc.get("consoleSize")
    if cs is not None and not (cs.get("height") and cs.get("width")):
        del proc["consoleSize"]
    if not proc.get("terminal"):
        proc.pop("consoleSize", None)
    if "oomScoreAdj" in proc and proc["oomScoreAdj"] > 1000:
        # oci.proto carries it as uint32: a negative int32 arrives wrapped.
        proc["oomScoreAdj"] -= 1 << 32


def prepare_spec(spec_pb, container_id: str, bundle: str, cgroup_parent: str) -> dict:
    """Container spec -> the config.json runc gets. Raises SpecError."""
    if spec_pb is None:
        raise SpecError("CreateContainerRequest.OCI (the OCI spec) is missing")
    if not spec_pb.HasField("Process"):
        raise SpecError("OCI.Process is missing")
    spec = message_to_oci(spec_pb)
    spec.pop("solaris", None)
    spec.pop("windows", None)
    # Hooks name host binaries: the runtime runs them on the host, not us.
    if spec.pop("hooks", None):
        log.info("container %s: OCI hooks dropped (they run on the host)", container_id)
    spec["ociVersion"] = spec.get("ociVersion") or OCI_VERSION
    check_process(spec["process"])

    root = spec.setdefault("root", {})
    root["path"] = os.path.join(bundle, "rootfs")

    linux = spec.setdefault("linux", {})
    namespaces = []
    seen = set()
    for ns in linux.get("namespaces", []):
        typ = ns.get("type", "")
        if typ not in _NAMESPACE_TYPES:
            raise SpecError(f"Linux.Namespaces: unknown namespace type {typ!r}")
        if typ in seen:
            continue
        if ns.get("path"):
            # A path names a host namespace: meaningless in the guest. "Join
            # the sandbox's network" means the guest's own network namespace.
            if typ == "network":
                continue
        seen.add(typ)
        namespaces.append({"type": typ})
    for typ in ("pid", "mount"):
        if typ not in seen:
            namespaces.append({"type": typ})
            seen.add(typ)
    linux["namespaces"] = namespaces
    if spec.get("hostname") and "uts" not in seen:
        spec.pop("hostname")
    if not linux.get("cgroupsPath"):
        linux["cgroupsPath"] = f"{cgroup_parent.rstrip('/')}/{container_id}"
    res = linux.get("resources")
    if res is not None and not res:
        del linux["resources"]

    mounts = spec.setdefault("mounts", [])
    dests = {os.path.normpath(m.get("destination", "")) for m in mounts}
    for m in mounts:
        if not m.get("destination", "").startswith("/"):
            raise SpecError(f"mount destination {m.get('destination')!r} must be absolute")
    extra = [dict(m) for m in DEFAULT_MOUNTS if m["destination"] not in dests]
    if extra:
        # Prepend, keeping parents before children (/dev before /dev/pts).
        spec["mounts"] = extra + mounts
    return spec


def ensure_mountpoints(spec: dict) -> None:
    """Create missing mount points in the rootfs (a read-only or 9p rootfs
    cannot get them from runc). Never follows a symlink inside the rootfs."""
    rootfs = spec["root"]["path"]
    for m in spec.get("mounts", []):
        dest = os.path.normpath(m["destination"])
        parts = [p for p in dest.split("/") if p]
        if not parts:
            continue
        is_file = False
        if m.get("type") in ("bind", "none", "") or "bind" in m.get("options", []) or \
                "rbind" in m.get("options", []):
            src = m.get("source", "")
            is_file = bool(src) and os.path.exists(src) and not os.path.isdir(src)
        path = rootfs
        try:
            for i, part in enumerate(parts):
                path = os.path.join(path, part)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    if i == len(parts) - 1 and is_file:
                        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
                    else:
                        os.mkdir(path, 0o755)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    break  # runc resolves it safely itself
        except OSError as e:
            log.debug("cannot create mount point %s: %s", path, e)
