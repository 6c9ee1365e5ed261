"""A container's cgroup on the host: the spec's ``linux.cgroupsPath``, holding kata-runtime's
host processes for it, as Kata 1.x's ``sandbox_cgroup_only`` did.

Why: containerd-shim-runc-v2 (1.6: runtime/v2/runc/container.go, NewContainer) loads the
cgroups of the pid in ``--pid-file`` right after ``create`` (v1: every hierarchy the pid is in,
from /proc/<pid>/cgroup; v2: its one group) and answers ``ctr task metrics`` (and the CRI's
container stats) from them. That pid is a kata-shim: without this module it sits in the host's
root cgroups and the "container's" statistics are the whole host's.

What lives in it (``create`` and ``exec`` join the cgroup before they start anything, so
their children are born in it and charged from their first page, and ``leave`` it once they
have: before a failed create's clean-up runs, or once the processes are started, so that the
runtime itself never stays, not even ``kata-runtime run`` waiting in the foreground):

* the sandbox container (``ctr run``, ``docker run``, a pod's pause container): everything
  kata-runtime starts for the sandbox — kata-proxy, the hypervisor (QEMU with all its threads:
  vCPUs, I/O, the guest's RAM as the guest touches it; for the process sandbox unshare,
  kata-agent and the containers, whose cgroups runc nests below it: ``for_guest``), the
  container's kata-shim and the kata-shim of every exec. So for a VM the statistics are the VM's real host cost;
  the guest's own view of the container is ``kata-runtime events --stats`` (the agent's).
* a container joining a pod's sandbox: its own kata-shims only.

Limits (``apply_limits``), only where they make sense for a whole VM: the CPU ones (``cpu.shares``
/ ``cpu.weight``, the CFS quota and period, ``cpuset.cpus`` and ``cpuset.mems``) of a container
that has a sandbox of its own and no CRI annotations: the VM may not use more host CPU than
its one container was given. Never memory (the guest's RAM is fixed by the configuration: a
container limit below it would have the host OOM-kill QEMU; the guest enforces the container's
limit), pids (QEMU and the proxy have threads of their own) or devices (QEMU needs /dev/kvm,
/dev/net/tun). A CRI pod's cgroups are sized by the kubelet: nothing is applied there.

The record (``plan``), kept in the container's state as ``host_cgroup``::

    {"path": "/ns/id", "dirs": {controller: absolute directory}, "made": [directories this
     runtime created], "limits": bool}

Removal (``remove``) is the runtime's last step of ``delete`` (forced or not), after the
sandbox stopped: every process still in a made directory is SIGKILLed and the tree thawed (a
frozen task dies only once thawed), then the tree is removed bottom-up, retrying up to
REMOVE_TIMEOUT s while the kernel releases dead tasks. A cgroupsPath that existed before
``create`` (runc lets a container join one) is joined but never emptied nor removed.

runc in the process sandbox's agent puts the hybrid hierarchy's (cgroup2 at
/sys/fs/cgroup/unified) group of a container at that hierarchy's root, not below the agent
(``kata-sandbox-<id>``): the process driver removes it as before.

Not handled: a systemd-style cgroupsPath (``slice:prefix:name``, ``--systemd-cgroup``): nothing
is created, the processes stay where they are. cgroup v2 follows runc's rules (relative paths
are below the parent of the runtime's own group; controllers enabled top-down) but is verified
only on v1 hosts (with the hybrid unified hierarchy).
"""

from __future__ import annotations

import errno
import os
import time

import kata_cgroups
from kata_cgroups import UNIFIED
from kata_runtime.errors import KataError
from kata_runtime.log import current as current_log

REMOVE_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
#: v2 controllers enabled on the way down to a new group, where the parent offers them.
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids", "hugetlb")
#: Annotation keys that mark a container as part of a CRI pod (kata_runtime.pod.CRI_KEYS).
CRI_TYPE_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType",
                 "io.kubernetes.docker.type")

#: This process's cgroups before its last ``join`` (controller -> directory), for ``leave``;
#: None when it has not joined (or has left).
_joined_from: dict[str, str] | None = None


# ------------------------------------------------------------------ plan


def is_systemd_path(path: str) -> bool:
    """True for runc's systemd form ``slice:prefix:name`` (not a cgroupfs path)."""
    return not path.startswith("/") and path.count(":") == 2


def resolve(path: str, mounts: dict[str, str], own: dict[str, str]) -> dict[str, str]:
    """controller -> absolute directory of cgroupsPath ``path`` in each hierarchy, by runc's rules:
    an absolute path is below each hierarchy's root; a relative one below the runtime's own
    cgroup (``own``, controller -> directory), on a v2-only host below that group's parent.

    ``mounts``: kata_cgroups.hierarchy_mounts(). Raises KataError for a path that names a
    hierarchy's root or climbs out of it (``..``)."""
    v2_only = set(mounts) == {UNIFIED}
    dirs = {}
    for controller, mount in mounts.items():
        if path.startswith("/"):
            base = mount
        else:
            base = own.get(controller, mount)
            if v2_only and base != mount:
                base = os.path.dirname(base)
        target = os.path.normpath(os.path.join(base, path.lstrip("/")))
        if not target.startswith(mount.rstrip("/") + "/"):
            raise KataError(f"cgroupsPath {path!r} is not below the root of the {controller or 'v2'} "
                            f"cgroup hierarchy {mount}")
        dirs[controller] = target
    return dirs


def wants_limits(annotations: dict | None) -> bool:
    """Whether the host cgroup gets the container's CPU limits: a container with no CRI type
    annotation (one container, one sandbox; a pod's cgroups are the orchestrator's)."""
    return not any(key in (annotations or {}) for key in CRI_TYPE_KEYS)


def plan(spec: dict, *, own_sandbox: bool) -> dict | None:
    """The host cgroup record for a container's OCI ``spec`` (shape: module docstring), or None
    when the spec has no ``linux.cgroupsPath`` or a systemd-style one (logged). ``own_sandbox``:
    the container gets a sandbox of its own (limits are then considered). Nothing is created
    here; ``made`` lists the directories that do not exist yet. Raises KataError (bad path)."""
    path = ((spec.get("linux") or {}).get("cgroupsPath") or "").strip()
    if not path:
        return None
    if is_systemd_path(path):
        current_log().info("cgroupsPath is in systemd's form: no host cgroup is made for it", path=path)
        return None
    mounts = kata_cgroups.hierarchy_mounts()
    if not mounts:
        raise KataError("no cgroup hierarchy is mounted (/proc/self/mountinfo): cannot make cgroupsPath "
                        f"{path}")
    dirs = resolve(path, mounts, kata_cgroups.cgroup_paths(os.getpid()))
    made = sorted(d for d in set(dirs.values()) if not os.path.isdir(d))
    return {"path": path, "dirs": dirs, "made": made,
            "limits": own_sandbox and wants_limits(spec.get("annotations"))}


def for_guest(spec: dict, hypervisor: str) -> dict:
    """The spec as the sandbox's agent gets it. For the process sandbox, whose "guest" cgroups
    are the host's, without ``linux.cgroupsPath``: runc there would otherwise put the container
    in the very host cgroup that holds the agent, kata-proxy and the shims (and apply the
    container's memory, pids and device limits to them); the agent's default nests it below
    its own cgroup instead (``<cgroup-parent>/<id>``, so below the host cgroup), as a guest's
    cgroups sit inside its VM. A VM's agent gets the spec unchanged. Returns a new dict."""
    linux = spec.get("linux") or {}
    if hypervisor != "process" or "cgroupsPath" not in linux:
        return spec
    return {**spec, "linux": {k: v for k, v in linux.items() if k != "cgroupsPath"}}


# ---------------------------------------------------------------- create


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _ancestors(directory: str, mount: str) -> list[str]:
    """The directories from just below ``mount`` down to ``directory`` (top first)."""
    rel = os.path.relpath(directory, mount).split(os.sep)
    return [os.path.join(mount, *rel[:i]) for i in range(1, len(rel) + 1)]


def _fill_cpuset(directory: str, mount: str) -> None:
    """v1 cpuset: a new group has no CPUs or memory nodes and refuses tasks (ENOSPC); give each
    empty level its parent's, top-down (runc does the same)."""
    for level in _ancestors(directory, mount):
        parent = os.path.dirname(level)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not _read(os.path.join(level, name)):
                _write(os.path.join(level, name), _read(os.path.join(parent, name)))


def _enable_v2_controllers(directory: str, mount: str) -> None:
    """v2: enable the parent-offered V2_CONTROLLERS in every level above ``directory``, top-down,
    so the group has their files (a level that refuses is logged: fewer statistics, no error)."""
    for level in [mount] + _ancestors(directory, mount)[:-1]:
        offered = _read(os.path.join(level, "cgroup.controllers")).split()
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in offered)
        if not wanted:
            continue
        try:
            _write(os.path.join(level, "cgroup.subtree_control"), wanted)
        except OSError as e:
            current_log().debug(f"host cgroup: enabling {wanted} in {level}: {e}")


def create(record: dict) -> None:
    """Make every directory of ``record`` (v1 cpuset filled from its parent, v2 controllers
    enabled above it). Raises KataError naming the directory."""
    mounts = kata_cgroups.hierarchy_mounts()
    for controller, directory in sorted(record["dirs"].items()):
        mount = mounts.get(controller)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            if mount and controller == "cpuset":
                _fill_cpuset(directory, mount)
            if mount and controller == UNIFIED and set(mounts) == {UNIFIED}:
                _enable_v2_controllers(directory, mount)
        except OSError as e:
            raise KataError(f"cannot make the host cgroup {directory}: {e.strerror or e}") from None


def _v2_weight(shares: int) -> int:
    """runc's cpu.shares (2..262144) -> cpu.weight (1..10000) conversion."""
    return 1 + ((shares - 2) * 9999) // 262142


def limit_files(resources: dict | None, v2: bool) -> list[tuple[str, str, str]]:
    """The CPU limits of OCI ``linux.resources`` as cgroup files, in write order:
    [(controller, file name, value)]. Only cpu (shares, quota, period) and cpuset (cpus, mems):
    see the module docstring for why nothing else. Pure function."""
    cpu = (resources or {}).get("cpu") or {}
    out: list[tuple[str, str, str]] = []
    shares, quota, period = cpu.get("shares"), cpu.get("quota"), cpu.get("period")
    if v2:
        if shares:
            out.append((UNIFIED, "cpu.weight", str(_v2_weight(int(shares)))))
        if quota or period:
            out.append((UNIFIED, "cpu.max", f"{quota if quota and quota > 0 else 'max'} {period or 100000}"))
    else:
        if shares:
            out.append(("cpu", "cpu.shares", str(shares)))
        if period:
            out.append(("cpu", "cpu.cfs_period_us", str(period)))
        if quota:
            out.append(("cpu", "cpu.cfs_quota_us", str(quota)))
    for key in ("cpus", "mems"):
        if cpu.get(key):
            out.append((UNIFIED if v2 else "cpuset", f"cpuset.{key}", str(cpu[key])))
    return out


def apply_limits(record: dict, resources: dict | None) -> None:
    """Write the CPU limits of ``resources`` (OCI ``linux.resources``) to the host cgroup when
    the record asks for limits (``limits``); a hierarchy that is not mounted is skipped.
    Raises KataError naming the file and the value."""
    if not record.get("limits"):
        return
    dirs = record["dirs"]
    v2 = set(dirs) == {UNIFIED}
    for controller, name, value in limit_files(resources, v2):
        directory = dirs.get(controller)
        if directory is None:
            continue
        try:
            _write(os.path.join(directory, name), value)
        except OSError as e:
            raise KataError(f"cannot set {name} = {value} in the host cgroup {directory}: "
                            f"{e.strerror or e}") from None


# ----------------------------------------------------------- membership


def _move(pid: int, directories) -> None:
    """Write ``pid`` to cgroup.procs of each directory (the whole thread group moves)."""
    for directory in sorted(set(directories)):
        _write(os.path.join(directory, "cgroup.procs"), str(pid))


def join(record: dict) -> None:
    """Move this process into the host cgroup (every hierarchy), so that everything it starts
    from now on is born there. Raises KataError (this process is moved back first)."""
    global _joined_from
    before = kata_cgroups.cgroup_paths(os.getpid())
    try:
        _move(os.getpid(), record["dirs"].values())
    except OSError as e:
        leave(before)
        raise KataError(f"cannot join the host cgroup {record['path']}: {e.strerror or e}") from None
    _joined_from = before


def move_processes(record: dict | None, pids) -> None:
    """Move each process in ``pids`` (started elsewhere: a cached sandbox's) where the runtime
    would have started it: into the host cgroup of ``record`` (every hierarchy), or with no
    record into this process's own cgroups. A process that ended meanwhile is skipped; raises
    KataError."""
    directories = record["dirs"].values() if record is not None else kata_cgroups.cgroup_paths(os.getpid()).values()
    where = f"the host cgroup {record['path']}" if record is not None else "the runtime's cgroup"
    for pid in pids:
        # Only the hierarchies where it is elsewhere: each cgroup.procs write costs ~0.4 ms
        # (cgroup v1 has a dozen), on the path of the create that took the sandbox.
        there = {os.path.normpath(d) for d in kata_cgroups.cgroup_paths(pid).values()}
        try:
            _move(pid, [d for d in directories if os.path.normpath(d) not in there])
        except ProcessLookupError:
            continue
        except OSError as e:
            if e.errno == errno.ESRCH:  # cgroup.procs: it ended
                continue
            raise KataError(f"cannot move pid {pid} into {where}: {e.strerror or e}") from None


def leave(original: dict[str, str] | None = None) -> None:
    """Move this process back to ``original`` (controller -> directory; default: where the last
    ``join`` found it; nothing to do without either). Best effort: failures are logged."""
    global _joined_from
    target = original or _joined_from
    if not target:
        return
    for directory in sorted(set(target.values())):
        try:
            _move(os.getpid(), [directory])
        except OSError as e:
            current_log().debug(f"host cgroup: moving back to {directory}: {e}")
    _joined_from = None


def _tree(directory: str) -> list[str]:
    """``directory`` and every group below it, deepest first (empty if it does not exist)."""
    found = [d for d, _subdirs, _files in os.walk(directory)]
    return sorted(found, key=len, reverse=True)


def _pids_in(directories) -> set[int]:
    """Pids of the processes in ``directories`` and every group below them."""
    pids: set[int] = set()
    for directory in set(directories):
        for group in _tree(directory):
            pids.update(int(p) for p in _read(os.path.join(group, "cgroup.procs")).split() if p.isdigit())
    return pids


def tasks(record: dict) -> list[int]:
    """Pids of the processes in the host cgroup and below (every hierarchy, sorted)."""
    return sorted(_pids_in(record["dirs"].values()))


# ---------------------------------------------------------------- remove


def _thaw_all(directories: list[str]) -> None:
    """Thaw every group of the trees (v1 ``freezer.state``, v2 ``cgroup.freeze``), top-down: a
    frozen task does not die of SIGKILL until thawed (a paused container of the process
    sandbox is frozen below the host cgroup). Groups without those files are skipped."""
    for directory in directories:
        for group in reversed(_tree(directory)):
            for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                path = os.path.join(group, name)
                if os.path.exists(path):
                    try:
                        _write(path, value)
                    except OSError as e:
                        current_log().debug(f"host cgroup: thawing {group}: {e}")


def _kill_all(directories: list[str]) -> None:
    """SIGKILL every process in ``directories`` and below, this process excepted."""
    import signal  # here: it imports enum, and a create rarely gets here

    for pid in _pids_in(directories) - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rmdir_trees(directories: list[str]) -> list[str]:
    """rmdir every group of the trees, deepest first; returns those still there."""
    left = []
    for directory in directories:
        for group in _tree(directory):
            try:
                os.rmdir(group)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(group)
    return left


def thaw(record: dict | None) -> None:
    """Thaw the directories this runtime made and every group below them (``delete --force``
    does it first: a container paused in the process sandbox is frozen below the host cgroup,
    and its processes would outlive a killed agent until thawed)."""
    if record and record.get("made"):
        _thaw_all([d for d in record["made"] if os.path.isdir(d)])


def remove(record: dict | None, timeout: float = REMOVE_TIMEOUT) -> list[str]:
    """Empty and remove the directories this runtime made (``made``), whatever still runs in
    them (SIGKILL, then thawed), retrying for up to ``timeout`` s while the kernel releases dead
    tasks. If this process is inside, it leaves first. Returns the directories still left
    (logged)."""
    if not record or not record.get("made"):
        return []
    made = [d for d in record["made"] if os.path.isdir(d)]
    if os.getpid() in _pids_in(made):
        leave(_joined_from or kata_cgroups.hierarchy_mounts())
    deadline = time.monotonic() + timeout
    while True:
        _kill_all(made)
        _thaw_all(made)
        left = _rmdir_trees(made)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    if left:
        current_log().warning(f"host cgroup {record.get('path')}: could not remove {', '.join(left)}")
    return left
