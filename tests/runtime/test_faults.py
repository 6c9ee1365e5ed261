"""Faults and concurrency through the kata-runtime CLI (process tier): a component killed
mid-run makes `state` say stopped (never running), `delete --force` then leaves nothing;
concurrent creates of 8 containers all succeed and all clean up."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.processes import kill_pid, wait_for

pytestmark = pytest.mark.sandbox


def sandbox_record(kata, cid: str) -> dict:
    return json.loads((kata.root / "sandboxes" / cid / "sandbox.json").read_text())


def agent_pid(kata, cid: str) -> int:
    """The agent: the only child of the sandbox's unshare (PID 1 of its pid namespace)."""
    unshare = sandbox_record(kata, cid)["hypervisor"]["process"]["pid"]
    with open(f"/proc/{unshare}/task/{unshare}/children") as f:
        (child,) = f.read().split()
    return int(child)


VICTIMS = {
    "shim": lambda kata, cid: kata.state(cid)["pid"],
    "proxy": lambda kata, cid: sandbox_record(kata, cid)["proxy"]["process"]["pid"],
    "agent": agent_pid,
}


@pytest.mark.parametrize("victim", sorted(VICTIMS))
def test_component_killed_mid_run(kata, bundle, new_id, victim):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    assert kata.state(cid)["status"] == "running"
    kill_pid(VICTIMS[victim](kata, cid), signal.SIGKILL)
    st = kata.wait_status(cid, "stopped", timeout=15)
    assert st["pid"] == 0
    if victim != "shim":  # the sandbox is gone: commands that need the agent fail clearly
        p = kata.run("exec", cid, "true")
        assert p.returncode == 255 and p.stderr.count(b"\n") == 1, kata.explain(p, ["exec"])
    kata.ok("delete", "--force", cid)  # the kata fixture then checks nothing is left


def test_delete_without_force_after_the_agent_died(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    kill_pid(agent_pid(kata, cid), signal.SIGKILL)
    kata.wait_status(cid, "stopped", timeout=15)
    kata.ok("delete", cid)


def test_concurrent_creates_of_8_containers(kata, bundle, new_id):
    ids = [new_id("kc") for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda cid: kata.create(cid, bundle, timeout=300), ids))
    for cid, p in zip(ids, results):
        assert p.returncode == 0, kata.explain(p, ["create", cid])
    assert sorted(kata.ok("list", "--quiet").split()) == sorted(ids)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda cid: kata.ok("start", cid), ids))
    assert {s["status"] for s in json.loads(kata.ok("list", "--format", "json"))} == {"running"}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda cid: kata.ok("delete", "--force", cid, timeout=300), ids))
    assert kata.ok("list", "--quiet") == ""


def test_concurrent_commands_on_one_container_queue_up(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    with ThreadPoolExecutor(4) as pool:
        starts = list(pool.map(lambda _: kata.run("start", cid), range(4)))
    assert sorted(p.returncode for p in starts) == [0, 1, 1, 1]  # exactly one start wins
    with ThreadPoolExecutor(4) as pool:
        deletes = list(pool.map(lambda _: kata.run("delete", "--force", cid), range(4)))
    # one removes it under the lock; the others then find no container, which --force
    # accepts as runc 1.1 does (delete.go): every one succeeds, none half-removes anything
    assert [p.returncode for p in deletes] == [0, 0, 0, 0], [p.stderr for p in deletes]
    assert kata.run("delete", cid).returncode == 1  # without --force a missing one is an error
    wait_for(lambda: kata.run("state", cid).returncode == 1, what="the container to be gone")


def test_create_killed_half_way_is_stopped_and_delete_cleans_up(kata, bundle, new_id):
    import os
    import subprocess

    cid = new_id()
    kata.ids.append(cid)
    proxy_socket = f"/run/vc/vm/{cid}/proxy.sock"
    create = subprocess.Popen(kata.argv("create", "--bundle", str(bundle), cid), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(proxy_socket) or create.poll() is not None, what="kata-proxy's socket")
        create.kill()  # the runtime dies with agent and proxy started, nothing recorded as created
    finally:
        create.wait()
    assert kata.state(cid)["status"] in ("stopped", "created")
    if kata.state(cid)["status"] == "created":  # the create won the race: still a valid test of delete
        kata.ok("delete", "--force", cid)
    else:
        kata.ok("delete", cid)  # a crashed create is stopped: no --force needed
