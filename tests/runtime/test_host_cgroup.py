"""kata_runtime.host_cgroup: the spec's cgroupsPath made on the host for kata-runtime's processes.

The pure parts (path rules, limit files) need nothing; the rest writes the real cgroup
filesystem (root), under a top directory of its own that is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

import kata_cgroups
from kata_cgroups import UNIFIED
from kata_runtime import host_cgroup
from kata_runtime.errors import KataError
from kata_runtime.procs import pid_alive
from tests.support.requirements import requires
from tests.support.processes import runs_kata_agent

V1 = {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory", UNIFIED: "/sys/fs/cgroup/unified"}
V2 = {UNIFIED: "/sys/fs/cgroup"}


def test_absolute_path_is_below_each_hierarchy_root():
    own = {"cpu": "/sys/fs/cgroup/cpu/user", "memory": "/sys/fs/cgroup/memory/a/b"}
    assert host_cgroup.resolve("/ns/c1", V1, own) == {
        "cpu": "/sys/fs/cgroup/cpu/ns/c1", "memory": "/sys/fs/cgroup/memory/ns/c1",
        UNIFIED: "/sys/fs/cgroup/unified/ns/c1"}


def test_relative_path_is_below_the_runtime_own_cgroup_v1_and_its_parent_v2():
    own = {"cpu": "/sys/fs/cgroup/cpu/user", "memory": "/sys/fs/cgroup/memory/a/b"}
    assert host_cgroup.resolve("k/c1", V1, own)["memory"] == "/sys/fs/cgroup/memory/a/b/k/c1"
    assert host_cgroup.resolve("k/c1", V1, own)[UNIFIED] == "/sys/fs/cgroup/unified/k/c1"
    assert host_cgroup.resolve("k/c1", V2, {UNIFIED: "/sys/fs/cgroup/user.slice/s.scope"}) == {
        UNIFIED: "/sys/fs/cgroup/user.slice/k/c1"}


@pytest.mark.parametrize("path", ["/", "/..", "/a/../..", "../x"])
def test_a_path_at_or_above_the_root_is_refused(path):
    with pytest.raises(KataError, match="not below the root"):
        host_cgroup.resolve(path, V1, {})


def test_plan_skips_no_path_and_systemd_form():
    assert host_cgroup.plan({"linux": {}}, own_sandbox=True) is None
    assert host_cgroup.plan({}, own_sandbox=True) is None
    assert host_cgroup.plan({"linux": {"cgroupsPath": "system.slice:cri-containerd:abc"}}, own_sandbox=True) is None


def test_limits_only_for_a_container_outside_a_pod():
    assert host_cgroup.wants_limits({}) and host_cgroup.wants_limits(None)
    assert not host_cgroup.wants_limits({"io.kubernetes.cri.container-type": "sandbox"})
    assert not host_cgroup.wants_limits({"io.kubernetes.cri-o.ContainerType": "container"})


def test_limit_files_are_the_cpu_ones_only():
    resources = {"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
                 "memory": {"limit": 1 << 20}, "pids": {"limit": 3},
                 "devices": [{"allow": False, "access": "rwm"}]}
    assert host_cgroup.limit_files(resources, v2=False) == [
        ("cpu", "cpu.shares", "512"), ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"), ("cpuset", "cpuset.cpus", "0"), ("cpuset", "cpuset.mems", "0")]
    assert host_cgroup.limit_files(resources, v2=True) == [
        (UNIFIED, "cpu.weight", "20"), (UNIFIED, "cpu.max", "50000 100000"),
        (UNIFIED, "cpuset.cpus", "0"), (UNIFIED, "cpuset.mems", "0")]
    assert host_cgroup.limit_files({"cpu": {"quota": -1}}, v2=True) == [(UNIFIED, "cpu.max", "max 100000")]
    assert host_cgroup.limit_files(None, v2=False) == []


# ------------------------------------------------------- the real cgroup fs


@pytest.fixture
def top():
    """A top cgroup path of this test's own (``/kpy-hc-<hex>``); after the test, whatever runs in
    it (started by the test) is killed and it is removed in every hierarchy."""
    name = f"/kpy-hc-{uuid.uuid4().hex[:8]}"
    yield name
    tops = {m: m + name for m in kata_cgroups.hierarchy_mounts().values()}
    assert host_cgroup.remove({"path": name, "made": sorted(set(tops.values()))}) == []


def _in_child(record: dict, code: str) -> subprocess.CompletedProcess:
    """A child Python that joins ``record`` and runs ``code`` (this test process never moves)."""
    script = ("import json, sys; from kata_runtime import host_cgroup as h; "
              f"r = json.loads(sys.argv[1]); h.join(r); {code}")
    return subprocess.run([sys.executable, "-c", script, json.dumps(record)], capture_output=True, text=True,
                          timeout=60)


@requires(root="writes the host's cgroup filesystem")
def test_create_join_and_remove_with_what_runs_inside(top):
    record = host_cgroup.plan({"linux": {"cgroupsPath": f"{top}/c1", "resources": {"cpu": {"shares": 512}}}},
                              own_sandbox=True)
    assert record["made"] == sorted(set(record["dirs"].values())) and record["limits"]
    host_cgroup.create(record)
    host_cgroup.apply_limits(record, {"cpu": {"shares": 512}})
    if "cpu" in record["dirs"]:
        assert open(os.path.join(record["dirs"]["cpu"], "cpu.shares")).read().strip() == "512"
    # a child joins and starts a grandchild that outlives it: both are born in the cgroup
    res = _in_child(record, "import subprocess; p = subprocess.Popen(['sleep', '100'], "
                            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True); "
                            "print(p.pid)")
    assert res.returncode == 0, res.stderr
    sleeper = int(res.stdout)
    try:
        assert host_cgroup.tasks(record) == [sleeper]
        assert kata_cgroups.cgroup_paths(sleeper) == record["dirs"]
        # a nested group (as runc makes below the process sandbox's agent) goes too
        nested = os.path.join(record["dirs"]["memory"], "kata-sandbox-x", "c1")
        os.makedirs(nested)
        assert host_cgroup.remove(record, timeout=5) == []
        assert not any(os.path.exists(d) for d in record["dirs"].values())
        assert not pid_alive(sleeper)
    finally:
        try:
            os.kill(sleeper, 9)
        except ProcessLookupError:
            pass


@requires(root="writes the host's cgroup filesystem")
def test_a_cgroup_that_existed_is_joined_but_never_emptied_nor_removed(top):
    first = host_cgroup.plan({"linux": {"cgroupsPath": f"{top}/shared"}}, own_sandbox=True)
    host_cgroup.create(first)
    second = host_cgroup.plan({"linux": {"cgroupsPath": f"{top}/shared"}}, own_sandbox=True)
    assert second["made"] == []
    assert host_cgroup.remove(second) == []
    assert all(os.path.isdir(d) for d in first["dirs"].values())
    assert host_cgroup.remove(first) == []


@requires(root="writes the host's cgroup filesystem")
def test_remove_from_inside_leaves_first(top):
    """``kata-runtime run`` deletes from inside the cgroup it joined at create."""
    record = host_cgroup.plan({"linux": {"cgroupsPath": f"{top}/run"}}, own_sandbox=True)
    host_cgroup.create(record)
    res = _in_child(record, "import os; left = h.remove(r); print(left, os.getpid() in h.tasks(r))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]", "False"]
    assert not any(os.path.exists(d) for d in record["dirs"].values())


# ------------------------------------------------- through the kata-runtime CLI


def _with_cgroup(bundle, path: str, resources: dict) -> None:
    """Give the bundle's spec ``linux.cgroupsPath`` and ``linux.resources``."""
    config = json.loads((bundle / "config.json").read_text())
    config["linux"].update(cgroupsPath=path, resources=resources)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))


@pytest.mark.sandbox
def test_cli_create_limits_update_and_delete(kata, bundle, new_id, top):
    """``create`` makes the cgroupsPath with the CPU limits only (the memory one is the
    container's, below it, as the agent sees it), the sandbox's processes in it; ``update``
    changes its CPU limits too; ``delete`` removes it."""
    cid = new_id("hc")
    path = f"{top}/{cid}"
    _with_cgroup(bundle, path, {"cpu": {"shares": 512, "quota": 50000, "period": 100000},
                                "memory": {"limit": 64 << 20}})
    assert kata.create(cid, bundle).returncode == 0, kata.log_tail()
    kata.ok("start", cid)
    mounts = kata_cgroups.hierarchy_mounts()
    cpu, memory = mounts["cpu"] + path, mounts["memory"] + path
    assert open(f"{cpu}/cpu.shares").read().strip() == "512"
    assert open(f"{cpu}/cpu.cfs_quota_us").read().strip() == "50000"
    assert int(open(f"{memory}/memory.limit_in_bytes").read()) > 64 << 20
    members = [open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip() for p in open(f"{cpu}/cgroup.procs").read().split()]
    assert any("kata-shim" in m for m in members) and any("kata-proxy" in m for m in members), members
    assert any(runs_kata_agent(m) for m in members), members
    guest = json.loads(kata.ok("events", "--stats", cid))["data"]
    assert guest["memory"]["usage"]["limit"] == 64 << 20
    kata.ok("update", "--cpu-shares", "256", cid)
    assert open(f"{cpu}/cpu.shares").read().strip() == "256"
    kata.ok("delete", "--force", cid)
    assert not any(os.path.exists(m + path) for m in mounts.values())
