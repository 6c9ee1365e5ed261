"""A process's cgroups, read and removed straight from the cgroup filesystem (v1 and v2).

Below both the runtime and the agent (stdlib only): the agent records each container's
cgroups, reads their statistics and removes what runc leaves; the host's process sandbox
removes the cgroup tree of a sandbox whose agent was killed.

``hierarchy_mounts()`` lists the mounted hierarchies; ``cgroup_paths(pid)`` records, from
/proc/<pid>/cgroup and /proc/self/mountinfo, the directory of each controller of a process
(for a container: once, while its init lives);
``read_stats(paths)`` reads them into a plain dict shaped like the agent API's
CgroupStats; ``remove_container_cgroups`` and ``remove_cgroup_trees`` clean up.
"""

from __future__ import annotations

import os
import time


def _log():
    """This package's logger; logging is imported only when something is logged (a create
    imports kata_cgroups before the agent's spawn, where logging costs ~6 ms)."""
    import logging

    return logging.getLogger("kata_cgroups")

UNIFIED = ""  # key of the v2 hierarchy in the paths dict


def _mounts() -> dict[str, str]:
    """controller name (or UNIFIED) -> mount point."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        rest = post.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        fstype, mnt, root = rest[0], fields[4], fields[3]
        if root != "/":
            continue
        if fstype == "cgroup2":
            out.setdefault(UNIFIED, mnt)
        elif fstype == "cgroup":
            for opt in rest[2].split(","):
                if opt in ("cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb", "cpuset",
                           "devices", "freezer", "net_cls", "net_prio", "perf_event", "rdma",
                           "misc") or opt.startswith("name="):
                    out.setdefault(opt, mnt)
    return out


def hierarchy_mounts() -> dict[str, str]:
    """Every cgroup hierarchy mounted at its root, from /proc/self/mountinfo: controller name
    (``cpu``, ``memory``..., ``name=systemd`` for a named v1 hierarchy, UNIFIED for the v2 one)
    -> mount point. Controllers sharing one hierarchy (``cpu,cpuacct``) share its mount point.
    Empty when /proc is unreadable."""
    return _mounts()


def cgroup_paths(pid: int) -> dict[str, str]:
    """controller -> absolute cgroup directory of process pid."""
    mounts = _mounts()
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as e:
        _log().debug("cannot read cgroups of %d: %s", pid, e)
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        names = controllers.split(",") if controllers else [UNIFIED]
        for name in names:
            mnt = mounts.get(name)
            if mnt:
                out[name] = os.path.join(mnt, path.lstrip("/"))
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(path: str) -> int:
    s = _read(path)
    if s is None:
        return 0
    s = s.strip()
    if s == "max" or not s:
        return 0
    try:
        return int(s)
    except ValueError:
        return 0


def _kv(path: str) -> dict[str, int]:
    out = {}
    s = _read(path)
    for line in (s or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def _blkio_entries(path: str) -> list[dict]:
    out = []
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1],
                        "value": int(parts[2])})
        elif len(parts) == 2 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": "",
                        "value": int(parts[1])})
    return out


def read_stats(paths: dict[str, str]) -> dict:
    if UNIFIED in paths and not any(k for k in paths if k):
        return _read_v2(paths[UNIFIED])
    stats: dict = {}
    hz = os.sysconf("SC_CLK_TCK") or 100
    cpuacct = paths.get("cpuacct")
    cpu = paths.get("cpu")
    if cpuacct or cpu:
        usage = {}
        if cpuacct:
            usage["total_usage"] = _int(os.path.join(cpuacct, "cpuacct.usage"))
            per = (_read(os.path.join(cpuacct, "cpuacct.usage_percpu")) or "").split()
            usage["percpu_usage"] = [int(x) for x in per if x.isdigit()]
            st = _kv(os.path.join(cpuacct, "cpuacct.stat"))
            usage["usage_in_usermode"] = st.get("user", 0) * 1_000_000_000 // hz
            usage["usage_in_kernelmode"] = st.get("system", 0) * 1_000_000_000 // hz
        thr = {}
        if cpu:
            st = _kv(os.path.join(cpu, "cpu.stat"))
            thr = {"periods": st.get("nr_periods", 0),
                   "throttled_periods": st.get("nr_throttled", 0),
                   "throttled_time": st.get("throttled_time", 0)}
        stats["cpu_stats"] = {"cpu_usage": usage, "throttling_data": thr}
    mem = paths.get("memory")
    if mem:
        def data(prefix: str) -> dict:
            return {"usage": _int(os.path.join(mem, prefix + "usage_in_bytes")),
                    "max_usage": _int(os.path.join(mem, prefix + "max_usage_in_bytes")),
                    "failcnt": _int(os.path.join(mem, prefix + "failcnt")),
                    "limit": _int(os.path.join(mem, prefix + "limit_in_bytes"))}
        mstat = _kv(os.path.join(mem, "memory.stat"))
        stats["memory_stats"] = {
            "cache": mstat.get("cache", 0),
            "usage": data("memory."),
            "swap_usage": data("memory.memsw."),
            "kernel_usage": data("memory.kmem."),
            "use_hierarchy": _int(os.path.join(mem, "memory.use_hierarchy")) == 1,
            "stats": mstat,
        }
    pids = paths.get("pids")
    if pids:
        stats["pids_stats"] = {"current": _int(os.path.join(pids, "pids.current")),
                               "limit": _int(os.path.join(pids, "pids.max"))}
    blkio = paths.get("blkio")
    if blkio:
        def pick(*names: str) -> list[dict]:
            for n in names:
                e = _blkio_entries(os.path.join(blkio, n))
                if e:
                    return e
            return []
        stats["blkio_stats"] = {
            "io_service_bytes_recursive": pick("blkio.io_service_bytes_recursive",
                                               "blkio.throttle.io_service_bytes_recursive",
                                               "blkio.throttle.io_service_bytes"),
            "io_serviced_recursive": pick("blkio.io_serviced_recursive",
                                          "blkio.throttle.io_serviced_recursive",
                                          "blkio.throttle.io_serviced"),
            "io_queued_recursive": pick("blkio.io_queued_recursive"),
            "io_service_time_recursive": pick("blkio.io_service_time_recursive"),
            "io_wait_time_recursive": pick("blkio.io_wait_time_recursive"),
            "io_merged_recursive": pick("blkio.io_merged_recursive"),
            "io_time_recursive": pick("blkio.time_recursive"),
            "sectors_recursive": pick("blkio.sectors_recursive"),
        }
    huge = paths.get("hugetlb")
    if huge:
        hs = {}
        try:
            names = os.listdir(huge)
        except OSError:
            names = []
        for n in names:
            if n.startswith("hugetlb.") and n.endswith(".usage_in_bytes") and ".rsvd." not in n:
                size = n[len("hugetlb."):-len(".usage_in_bytes")]
                hs[size] = {"usage": _int(os.path.join(huge, n)),
                            "max_usage": _int(os.path.join(huge, f"hugetlb.{size}.max_usage_in_bytes")),
                            "failcnt": _int(os.path.join(huge, f"hugetlb.{size}.failcnt"))}
        stats["hugetlb_stats"] = hs
    return stats


def _read_v2(d: str) -> dict:
    stats: dict = {}
    cpu = _kv(os.path.join(d, "cpu.stat"))
    stats["cpu_stats"] = {
        "cpu_usage": {"total_usage": cpu.get("usage_usec", 0) * 1000,
                      "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
                      "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000},
        "throttling_data": {"periods": cpu.get("nr_periods", 0),
                            "throttled_periods": cpu.get("nr_throttled", 0),
                            "throttled_time": cpu.get("throttled_usec", 0) * 1000}}
    mstat = _kv(os.path.join(d, "memory.stat"))
    stats["memory_stats"] = {
        "cache": mstat.get("file", 0),
        "usage": {"usage": _int(os.path.join(d, "memory.current")),
                  "max_usage": _int(os.path.join(d, "memory.peak")),
                  "limit": _int(os.path.join(d, "memory.max")),
                  "failcnt": _kv(os.path.join(d, "memory.events")).get("max", 0)},
        "swap_usage": {"usage": _int(os.path.join(d, "memory.swap.current")),
                       "limit": _int(os.path.join(d, "memory.swap.max"))},
        "use_hierarchy": True,
        "stats": mstat,
    }
    stats["pids_stats"] = {"current": _int(os.path.join(d, "pids.current")),
                           "limit": _int(os.path.join(d, "pids.max"))}
    entries_bytes, entries_ios = [], []
    for line in (_read(os.path.join(d, "io.stat")) or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = (int(x) for x in parts[0].split(":"))
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        for op, key in (("Read", "rbytes"), ("Write", "wbytes")):
            entries_bytes.append({"major": major, "minor": minor, "op": op, "value": int(kv.get(key, 0))})
        for op, key in (("Read", "rios"), ("Write", "wios")):
            entries_ios.append({"major": major, "minor": minor, "op": op, "value": int(kv.get(key, 0))})
    stats["blkio_stats"] = {"io_service_bytes_recursive": entries_bytes,
                            "io_serviced_recursive": entries_ios}
    return stats


def _rmdir(path: str) -> bool:
    """Remove one cgroup directory; a busy or non-empty one (or a missing one) is left alone."""
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def remove_container_cgroups(paths: dict[str, str], parent_name: str) -> None:
    """After `runc delete`: remove what is left of a container's cgroups.

    runc removes the container's own directories; the parent that runc created for
    ``<parent_name>/<id>`` stays behind. Remove both where empty (rmdir refuses a
    cgroup that still has processes or children, so siblings are safe).
    """
    for path in paths.values():
        _rmdir(path)
        parent = os.path.dirname(path)
        if os.path.basename(parent) == os.path.basename(parent_name.rstrip("/")):
            _rmdir(parent)


def remove_cgroup_trees(parent_name: str, pid: int | None = None, timeout: float = 3.0) -> list[str]:
    """Remove ``<cgroup of pid>/<parent_name>`` and everything below it in every hierarchy.

    For a sandbox whose agent was killed: its containers' processes die with its pid
    namespace, but their cgroup directories remain, busy (EBUSY) until the kernel
    has released the dead tasks; so retry for up to ``timeout`` seconds. Returns
    the directories still left (a cgroup with live processes is never removed).
    """
    tops = [os.path.join(base, parent_name)
            for base in cgroup_paths(os.getpid() if pid is None else pid).values()]
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for top in tops:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                if not _rmdir(dirpath):
                    left.append(dirpath)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
