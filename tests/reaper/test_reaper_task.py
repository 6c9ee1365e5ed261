"""``ctr run --tty``, ``ctr task exec/kill/pause/resume/ps/metrics`` through containerd-shim-runc-v2,
with the host's runc (the reference) and with kata-runtime.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.attach import Attached
from tests.support.containerd import (CGROUP_ROOT, KATA_RUNTIME, KATA_VM_ROOT, SLEEPER, _cmdline, all_pids,
                                      exec_tty, new_id, pause_resume, run_tty, wait_gone)

def _detached(ctr, image, runtime, prefix: str, cmd: list[str]) -> str:
    """``ctr run -d``: a running task (RUNNING), its container id returned."""
    cid = new_id(prefix)
    ctr.run_detached(image, cid, cmd, **runtime.run_kwargs())
    return cid


def test_run_tty(ctr, image, runtime):
    """``ctr run --tty`` on a pty the test opened: the container sees that pty's size, a typed
    line, a later resize; ctr returns the exit code."""
    rc, screen = run_tty(ctr, image, new_id("tty"), **runtime.run_kwargs())
    assert b"size:33 101\n" in screen
    assert b"/dev/pts/" in screen
    assert b"got:hello\n" in screen
    assert b"resized:40 120\n" in screen
    assert rc == 7, screen


def test_exec(ctr, image, runtime):
    """``ctr task exec`` without a tty: output, stderr and exit code of the exec'd process."""
    cid = _detached(ctr, image, runtime, "exec", SLEEPER)
    res = subprocess.run(ctr.exec_argv(cid, "e1", ["sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"]),
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (5, b"exec-out\n", b"exec-err\n")


def test_exec_tty(ctr, image, runtime):
    """``ctr task exec --tty`` on a pty: the exec'd shell has a terminal of that size and reads a line."""
    cid = _detached(ctr, image, runtime, "exectty", SLEEPER)
    rc, screen = exec_tty(ctr, cid, "t1")
    assert b"size:30 90\n" in screen and b"got:typed\n" in screen
    assert rc == 3, screen


@pytest.mark.parametrize("signal,cmd,status", [
    ("SIGTERM", ["sh", "-c", 'trap "exit 7" TERM; echo ready; while :; do sleep 0.1; done'], 7),
    ("SIGKILL", ["sh", "-c", "echo ready; sleep 1000"], 137),
])
def test_kill(ctr, image, runtime, signal, cmd, status):
    """``ctr task kill -s SIG``: TERM reaches the container's handler (its exit code is ctr's);
    KILL ends it with 128+9."""
    cid = new_id("kill")
    run = Attached.spawn(ctr.run_argv(image, cid, cmd, **runtime.run_kwargs()), stdin=False)
    try:
        run.wait_output(b"ready", 60)
        ctr.ctr("task", "kill", "-s", signal, cid, timeout=30)
        assert run.wait(30) == status, bytes(run.err)
    finally:
        run.kill()


def test_exec_killed(ctr, image, runtime):
    """``ctr task kill --exec-id ID -s SIGKILL``: the exec's ``ctr task exec`` returns 137 and its
    process is gone (``ctr task ps`` back to the init's three). containerd-shim sends that KILL
    to the pid in the exec's --pid-file itself: for kata-runtime the exec's kata-shim, whose
    sentinel (kata_shim.sentinel) relays it to the agent, then ends (the subreaper reaps it)."""
    cid = _detached(ctr, image, runtime, "execkill", SLEEPER)
    before = ctr.wait_task_pids(cid, 3)
    sleeper = Attached.spawn(ctr.exec_argv(cid, "k1", ["sh", "-c", "echo ready; exec sleep 1000"]), stdin=False)
    try:
        sleeper.wait_output(b"ready", 60)
        assert len(ctr.wait_task_pids(cid, 4)) == 4
        assert len(_exec_sentinels(cid)) == (runtime.name == "kata")  # one per kata-shim, none with runc
        ctr.ctr("task", "kill", "--exec-id", "k1", "-s", "SIGKILL", cid, timeout=30)
        assert sleeper.wait(30) == 137, bytes(sleeper.err)
    finally:
        sleeper.kill()
    assert sorted(ctr.wait_task_pids(cid, 3)) == sorted(before)
    assert wait_gone(_exec_sentinels(cid), 15.0) == []
    if runtime.name == "kata":  # the sentinel said so in the shim's log
        said = [line for line in Path(KATA_VM_ROOT, cid, "shim.log").read_text().splitlines() if "its sentinel" in line]
        assert len(said) == 1 and ("outcome=killed" in said[0] or 'outcome="already ended"' in said[0]), said


def _exec_sentinels(cid: str) -> list[int]:
    """The sentinels (kata_shim/sentinel.py: ``kata-sentinel -c ...``, then ``python -m
    kata_shim.sentinel``) of the kata-shims of ``cid``'s exec'd processes (their --exec-id is
    containerd's, not the one given to ctr)."""
    found = []
    for pid in all_pids():
        argv = _cmdline(pid)
        if (argv[:1] == ["kata-sentinel"] or "kata_shim.sentinel" in argv) and "--exec-id" in argv:
            container, exec_id = argv[argv.index("--container") + 1], argv[argv.index("--exec-id") + 1]
            if container == cid != exec_id:
                found.append(pid)
    return found


def test_kill_all(ctr, image, runtime):
    """``ctr task kill --all -s SIGKILL``: every process of the container, the task ends with 137."""
    cid = _detached(ctr, image, runtime, "killall", SLEEPER)
    assert len(ctr.wait_task_pids(cid, 3)) == 3
    ctr.ctr("task", "kill", "--all", "-s", "SIGKILL", cid, timeout=30)
    ctr.wait_task_status(cid, ("STOPPED",), timeout=30)
    res = ctr.ctr("task", "delete", cid, check=False, timeout=30)
    assert b"137" in res.stderr or res.returncode == 137, res


def test_pause_resume(ctr, image, runtime):
    """``ctr task pause``: PAUSED and no output; ``resume``: RUNNING and the output goes on."""
    cid = new_id("pause")
    cmd = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"]
    run = Attached.spawn(ctr.run_argv(image, cid, cmd, **runtime.run_kwargs()), stdin=False)
    try:
        run.wait_output(b"\n3\n", 60)
        assert pause_resume(ctr, cid, run.out) == ("PAUSED", False, "RUNNING", True)
        ctr.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
        assert run.wait(30) == 137
    finally:
        run.kill()


def test_ps(ctr, image, runtime):
    """``ctr task ps``: the container's three processes (sh and two sleeps)."""
    cid = _detached(ctr, image, runtime, "ps", SLEEPER)
    pids = ctr.wait_task_pids(cid, 3)
    assert len(pids) == 3, pids
    if runtime.name == "runc":  # host pids: the init's is the task's
        task_pid = int(ctr.ctr("task", "ls").stdout.decode().split(cid)[1].split()[0])
        assert task_pid in pids


def _cgroup_file(ctr, cid: str, controller: str, name: str) -> str:
    return Path(CGROUP_ROOT, controller, ctr.namespace, cid, name).read_text()


def _metrics_and_cgroup_pids(ctr, cid: str, tries: int = 5) -> tuple[dict, int]:
    """``ctr task metrics`` and the pids.current of ``/<ns>/<id>``, read until they agree (a
    thread may start between the two reads)."""
    for _ in range(tries):
        metrics = json.loads(ctr.ctr("task", "metrics", "--format", "json", cid, timeout=30).stdout)
        current = int(_cgroup_file(ctr, cid, "pids", "pids.current"))
        if (metrics.get("pids") or {}).get("current") == current:
            break
    return metrics, current


def _kata_events_stats(ctr, cid: str) -> dict:
    """``kata-runtime events --stats`` (the agent's statistics of the container) on the shim's --root."""
    res = subprocess.run([str(KATA_RUNTIME), "--root", f"{ctr.runtime_root}/{ctr.namespace}", "events", "--stats",
                          cid], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["data"]


def test_metrics(ctr, image, runtime):
    """``ctr task metrics``: containerd-shim-runc-v2 reports the cgroups of the pid in --pid-file
    (runc: the container's init; kata-runtime: the kata-shim), which must be the spec's
    cgroupsPath ``/<namespace>/<id>`` that ctr asked for, not the host's root.

    With kata-runtime that cgroup holds the sandbox's host processes (kata-shim, kata-proxy, the
    hypervisor: here the process sandbox's unshare and agent, an exec's kata-shim), the
    containers' own cgroups nested below it; ``kata-runtime events --stats`` and ``ctr task ps``
    still show the container alone (the agent's view: its three processes). Deleted, nothing of
    the cgroup is left."""
    cid = _detached(ctr, image, runtime, "metrics", SLEEPER)
    assert len(ctr.wait_task_pids(cid, 3)) == 3
    metrics, cgroup_pids = _metrics_and_cgroup_pids(ctr, cid)
    assert metrics["memory"]["usage"]["usage"] > 0, metrics
    assert (metrics.get("pids") or {}).get("current") == cgroup_pids, metrics.get("pids")
    if runtime.name == "kata":
        task_pid = int(ctr.ctr("task", "ls").stdout.decode().split(cid)[1].split()[0])
        members = [_cmdline(int(p)) for p in _cgroup_file(ctr, cid, "pids", "cgroup.procs").split()]
        assert f"/{ctr.namespace}/{cid}" in Path(f"/proc/{task_pid}/cgroup").read_text()
        # a program's name is in its first three arguments: `python -S /venv/bin/kata-shim` (make
        # venv's launchers), `python /venv/bin/kata-shim` (pip's scripts), `/usr/bin/unshare`
        for name in ("kata-shim", "kata-proxy", "unshare"):
            assert any(any(name in arg for arg in argv[:3]) for argv in members), (name, members)
        guest = _kata_events_stats(ctr, cid)
        assert guest["pids"]["current"] == 3, guest.get("pids")
        assert 0 < guest["memory"]["usage"]["usage"] < metrics["memory"]["usage"]["usage"]
        assert len(ctr.task_pids(cid)) == 3
        # an exec's kata-shim is born there too; the runtime that started it did not stay
        subprocess.run(ctr.exec_argv(cid, "m1", ["sleep", "1000"], detach=True), check=True, timeout=60)
        members = [_cmdline(int(p)) for p in _cgroup_file(ctr, cid, "pids", "cgroup.procs").split()]
        # one kata-shim per process (its sentinel, kata-sentinel, is no kata-shim)
        shims = {argv[argv.index("--exec-id") + 1] for argv in members if "--exec-id" in argv}
        assert len(shims) == 2 and cid in shims, members
        assert not any(any("kata-runtime" in arg for arg in argv[:3]) for argv in members), members
    ctr.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
    ctr.wait_task_status(cid, ("STOPPED",), timeout=30)
    ctr.ctr("task", "delete", cid, timeout=60)
    ctr.ctr("container", "delete", cid, timeout=30)
    assert ctr.wait_clean([cid]) == {}
