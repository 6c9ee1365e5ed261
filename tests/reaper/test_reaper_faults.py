"""Faults seen through containerd: a bundle that cannot start, containerd killed mid-run, the
containerd-shim killed mid-run, and many containers at once. After every task is deleted nothing
may be left: no shim, proxy, agent or container process, no mount, no state, no cgroup.
"""

from __future__ import annotations

import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.containerd import CGROUP_ROOT, SLEEPER, _cmdline, descendants, kill_pids, new_id, wait_gone

GENERIC_ERROR = re.compile(rb"OCI runtime create failed: (exit status \d+: )?(unknown)?\s*$")


@pytest.mark.parametrize("cmd,words", [
    (["/nonexistent-cmd", "x"], [b'"/nonexistent-cmd"', b"no such file or directory"]),
    (["nonexistent-cmd"], [b'"nonexistent-cmd"', b"executable file not found"]),
], ids=["absolute", "path-lookup"])
def test_cannot_start_shows_runtime_error(ctr, image, runtime, cmd, words):
    """``ctr run`` of a process that cannot start: ctr shows the runtime's own message (read by the
    shim from the --log JSON), not a generic "exit status 1"; nothing is left behind."""
    cid = new_id("bad")
    res = ctr.run(image, cid, cmd, **runtime.run_kwargs())
    assert res.returncode != 0
    message = res.stderr.strip()
    assert not GENERIC_ERROR.search(message), message
    for word in words:
        assert word in message, message
    if runtime.name == "kata":  # ours names the container and the step that failed
        assert cid.encode() in message and b"CreateContainer" in message, message
    assert ctr.wait_clean([cid]) == {}


def test_containerd_killed_mid_run(own_containerd, runtime):
    """SIGKILL to containerd while a task runs: the shim keeps the task; a new containerd finds
    it RUNNING; kill + delete then leave nothing."""
    cd, image = own_containerd
    cid = new_id("cdkill")
    cd.run_detached(image, cid, SLEEPER, **runtime.run_kwargs())
    shim = cd.shim_of(cid)
    cd.kill_daemon(signal.SIGKILL)
    assert wait_gone([shim], 1.0) == [shim], "the shim died with containerd"
    cd.launch()
    assert cd.tasks().get(cid) == "RUNNING"
    cd.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
    cd.wait_task_status(cid, ("STOPPED",), timeout=30)
    cd.delete(cid)
    assert cd.wait_clean([cid]) == {}


def test_shim_killed_mid_run(own_containerd, runtime):
    """SIGKILL to the task's containerd-shim: containerd cleans up after the dead shim (it runs
    ``<runtime> delete --force``); once the task and container are deleted, none of the shim's
    former descendants (container, kata-shim, proxy, agent) is alive and nothing is left."""
    cd, image = own_containerd
    cid = new_id("shimkill")
    cd.run_detached(image, cid, SLEEPER, **runtime.run_kwargs())
    shim = cd.shim_of(cid)
    below = descendants([shim])
    assert below, "the shim has no children"
    subprocess.run(["kill", "-KILL", str(shim)], check=True, timeout=10)
    assert wait_gone([shim], 10.0) == []
    cd.delete(cid)
    assert wait_gone(below, 20.0) == [], [f"{p} {' '.join(_cmdline(p))[:150]}" for p in below]
    # containerd 1.6 leaves a killed shim's socket file in /run/containerd/s (runc alike): not ours
    assert cd.wait_clean([cid], ignore=("shim_sockets",)) == {}


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_everything_killed_then_deleted(own_containerd, kata, paused):
    """SIGKILL to the containerd-shim and to every kata-runtime process of the task (the ones in
    its host cgroup ``/<ns>/<id>``: kata-shim, kata-proxy, the sandbox): deleting the task
    (containerd runs ``kata-runtime delete --force``) leaves nothing, the cgroup included. Paused
    first, the container's processes are frozen and outlive their agent until delete thaws them."""
    cd, image = own_containerd
    cid = new_id("allkill")
    cd.run_detached(image, cid, SLEEPER, **kata.run_kwargs())
    if paused:
        cd.ctr("task", "pause", cid, timeout=30)
    inside = [int(p) for p in Path(CGROUP_ROOT, "pids", cd.namespace, cid, "cgroup.procs").read_text().split()]
    assert len(inside) >= 3, inside
    victims = [cd.shim_of(cid)] + inside
    kill_pids(victims)
    assert wait_gone(victims[:1], 10.0) == []
    cd.delete(cid)
    assert wait_gone(victims, 20.0) == []
    assert cd.wait_clean([cid], ignore=("shim_sockets",)) == {}


def test_paused_then_deleted(ctr, image, runtime):
    """``ctr task pause``, then ``ctr task delete --force``: the frozen processes still die (they
    must be thawed for SIGKILL to take effect) and nothing is left, the cgroup included."""
    cid = new_id("paused")
    ctr.run_detached(image, cid, SLEEPER, **runtime.run_kwargs())
    ctr.ctr("task", "pause", cid, timeout=30)
    assert ctr.tasks()[cid] == "PAUSED"
    ctr.ctr("task", "delete", "--force", cid, timeout=60)
    ctr.ctr("container", "delete", cid, timeout=30)
    assert ctr.wait_clean([cid]) == {}


def test_many_at_once(ctr, image, runtime):
    """16 ``ctr run --rm`` at once: every output and exit code right, nothing left after."""
    count = 16
    cids = [new_id(f"many{i}") for i in range(count)]

    def one(i: int):
        return ctr.run_logged(image, cids[i], ["sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i % 5}"],
                              timeout=300, **runtime.run_kwargs())

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    for i, (res, out, err) in enumerate(results):
        assert (res.returncode, out, err) == (i % 5, f"out-{i}\n".encode(), f"err-{i}\n".encode()), res.stderr
    assert ctr.wait_clean(cids, timeout=30) == {}
