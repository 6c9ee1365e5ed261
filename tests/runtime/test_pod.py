"""Pods in the process tier: several containers in one sandbox, joined by the CRI annotations
(kata_runtime.pod), through the kata-runtime CLI as containerd's CRI plugin drives it.

The unit tests read the annotations; the ``sandbox`` tests run real agents, proxies and shims:
a container joining a running sandbox gets no sandbox of its own (one agent, one proxy), its
rootfs reaches the agent although the agent's mount namespace was copied before the rootfs was
mounted, deleting it leaves the sandbox running, deleting the sandbox container stops the whole
pod (Kata 1.x), and a failed join leaves the sandbox as it was.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from kata_runtime.errors import InvalidArgument
from kata_runtime.pod import CONTAINER, SANDBOX, pod_role
from tests.support.oci import make_bundle
from tests.support.processes import processes_mentioning, runs_kata_agent, wait_for
from tests.support.runtime import vm_dir

CRI = "io.kubernetes.cri."
GUEST_SHARED = "/run/kata-containers/shared/containers"


# ------------------------------------------------------------------ units


@pytest.mark.parametrize("annotations, role", [
    ({}, (SANDBOX, "c1")),
    ({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "c1"}, (SANDBOX, "c1")),
    ({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"}, (CONTAINER, "pod")),
    ({"io.kubernetes.cri-o.ContainerType": "sandbox"}, (SANDBOX, "c1")),
    ({"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "pod"}, (CONTAINER, "pod")),
    ({"io.kubernetes.docker.type": "podsandbox"}, (SANDBOX, "c1")),
    ({"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": "pod"}, (CONTAINER, "pod")),
    # the first type key present decides (containerd's before CRI-O's)
    ({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri-o.ContainerType": "container",
      "io.kubernetes.cri-o.SandboxID": "pod"}, (SANDBOX, "c1")),
    ({"io.kubernetes.cri.sandbox-id": "pod"}, (SANDBOX, "c1")),  # an id without a type: not a member
])
def test_pod_role_reads_the_cri_annotations_as_kata_1x(annotations, role):
    assert pod_role("c1", annotations) == role


@pytest.mark.parametrize("annotations, message", [
    ({"io.kubernetes.cri.container-type": "pause"},
     "unknown container type 'pause' in annotation io.kubernetes.cri.container-type"),
    ({"io.kubernetes.docker.type": "sandbox"}, "unknown container type 'sandbox' in annotation io.kubernetes.docker.type"),
    ({"io.kubernetes.cri.container-type": "container"}, "names no sandbox to join"),
    ({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": ""}, "names no sandbox"),
    ({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "c1"},
     "names itself as its sandbox"),
])
def test_pod_role_refuses_what_cannot_be_placed(annotations, message):
    with pytest.raises(InvalidArgument, match=message) as info:
        pod_role("c1", annotations)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- helpers


def pod_bundle(path, args, kind: str, sandbox_id: str, marker: str | None = None):
    """A busybox bundle with containerd CRI's annotations; ``marker`` is written to /marker in
    its rootfs (so a container shows WHICH rootfs it runs on)."""
    bundle = make_bundle(path, args, annotations={f"{CRI}container-type": kind, f"{CRI}sandbox-id": sandbox_id})
    if marker is not None:
        (bundle / "rootfs" / "marker").write_text(marker + "\n")
    return bundle


def agents_of(sandbox_id: str) -> list[int]:
    """Host pids of the process sandbox's kata-agent (not its unshare parent)."""
    return [pid for pid, cmd in processes_mentioning(vm_dir(sandbox_id) + "/")
            if runs_kata_agent(cmd) and not cmd.split()[0].endswith("unshare")]


def proxies_of(sandbox_id: str) -> list[int]:
    return [pid for pid, cmd in processes_mentioning(vm_dir(sandbox_id) + "/") if "kata-proxy" in cmd
            or "kata_proxy" in cmd]


def agent_mounts(agent: int) -> list[str]:
    """Mount points of the agent's mount namespace (field 5 of its mountinfo)."""
    with open(f"/proc/{agent}/mountinfo") as f:
        return [line.split()[4] for line in f]


def sandbox_record(kata, sandbox_id: str) -> dict:
    return json.loads((kata.root / "sandboxes" / sandbox_id / "sandbox.json").read_text())


def start_pod(kata, tmp_path, new_id, members: int = 1):
    """A running pod: its sandbox container (sleeps) and ``members`` joined containers, created
    concurrently (each prints its /marker, then sleeps). Returns (pod id, [member ids], outputs)."""
    pod = new_id("pod")
    b = pod_bundle(tmp_path / "pod", ["sleep", "1000"], "sandbox", pod, marker="pod-rootfs")
    assert kata.create(pod, b).returncode == 0, kata.log_tail()
    kata.ok("start", pod)
    ids = [new_id("member") for _ in range(members)]
    outs = {m: tmp_path / f"{m}.out" for m in ids}
    results = {}

    def join(m):
        b = pod_bundle(tmp_path / m, ["sh", "-c", "cat /marker; sleep 1000"], "container", pod, marker=f"{m}-rootfs")
        results[m] = kata.create(m, b, out=outs[m])

    threads = [threading.Thread(target=join, args=(m,)) for m in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in ids:
        assert results[m].returncode == 0, kata.explain(results[m], ["create", m])
        kata.ok("start", m)
    return pod, ids, outs


# ------------------------------------------------------------ process tier


@pytest.mark.sandbox
def test_containers_join_the_sandbox_named_by_their_annotations(kata, tmp_path, new_id):
    pod, members, outs = start_pod(kata, tmp_path, new_id, members=2)

    # one sandbox: one agent and one proxy, no runtime dir or sandbox state of the members' own
    assert len(agents_of(pod)) == 1 and len(proxies_of(pod)) == 1
    for m in members:
        assert not os.path.lexists(vm_dir(m)) and not (kata.root / "sandboxes" / m).exists()
    assert sandbox_record(kata, pod)["containers"][0] == pod
    assert sorted(sandbox_record(kata, pod)["containers"][1:]) == sorted(members)

    # each member runs on its own rootfs, mounted after the agent's mount namespace was made
    for m in members:
        wait_for(lambda: outs[m].read_text() == f"{m}-rootfs\n", what=f"{m}'s output")
        assert kata.state(m)["status"] == "running"
        assert kata.ok("exec", m, "cat", "/marker") == f"{m}-rootfs\n"
    assert kata.ok("exec", pod, "cat", "/marker") == "pod-rootfs\n"
    agent = agents_of(pod)[0]
    assert {f"{GUEST_SHARED}/{m}/rootfs" for m in members} <= set(agent_mounts(agent))


@pytest.mark.sandbox
def test_a_member_leaves_and_the_sandbox_keeps_running(kata, tmp_path, new_id):
    pod, (member,), _ = start_pod(kata, tmp_path, new_id)
    agent, proxies = agents_of(pod)[0], proxies_of(pod)

    kata.ok("kill", member, "KILL")
    kata.wait_status(member, "stopped")
    kata.ok("delete", member)

    assert kata.run("state", member).returncode == 1
    assert sandbox_record(kata, pod)["containers"] == [pod]
    assert agents_of(pod) == [agent] and proxies_of(pod) == proxies
    assert f"{GUEST_SHARED}/{member}/rootfs" not in agent_mounts(agent)  # unmounted in the agent, too
    assert not os.path.lexists(os.path.join(vm_dir(pod), "shared", member))
    assert not [line for line in open("/proc/self/mountinfo") if f"/shared/{member}/" in line]
    assert kata.ok("exec", pod, "cat", "/marker") == "pod-rootfs\n"

    kata.ok("delete", "--force", pod)  # the last container: the sandbox goes
    assert agents_of(pod) == [] and proxies_of(pod) == [] and not os.path.lexists(vm_dir(pod))


@pytest.mark.sandbox
def test_deleting_the_sandbox_container_stops_the_whole_pod(kata, tmp_path, new_id):
    """Kata 1.x (cli/delete.go): the sandbox container's delete stops and deletes the sandbox;
    the members' processes die with it. Their state stays, ``stopped``, until their own delete."""
    pod, (member,), _ = start_pod(kata, tmp_path, new_id)
    member_shim = kata.state(member)["pid"]

    kata.ok("kill", pod, "KILL")
    kata.wait_status(pod, "stopped")
    kata.ok("delete", pod)  # not --force: the sandbox container itself has stopped

    assert agents_of(pod) == [] and proxies_of(pod) == [] and not os.path.lexists(vm_dir(pod))
    assert not os.path.exists(f"/proc/{member_shim}") or open(f"/proc/{member_shim}/stat").read().split()[2] == "Z"
    st = kata.state(member)
    assert (st["status"], st["pid"]) == ("stopped", 0)
    p = kata.run("exec", member, "true")
    assert (p.returncode, p.stderr) == (255, b"exec failed: cannot exec in a stopped container\n")  # runc's
    kata.ok("delete", member)
    assert kata.run("state", member).returncode == 1


@pytest.mark.sandbox
def test_a_join_that_fails_leaves_the_sandbox_as_it_was(kata, tmp_path, new_id):
    pod, (member,), _ = start_pod(kata, tmp_path, new_id)
    agent = agents_of(pod)[0]
    before = sandbox_record(kata, pod)["containers"]

    bad = new_id("bad")
    b = pod_bundle(tmp_path / "bad", ["/no/such/program"], "container", pod)
    p = kata.create(bad, b)
    assert p.returncode == 1
    assert f"create container {bad}: creating the container in the agent (CreateContainer)" in p.stderr.decode()
    assert kata.run("state", bad).returncode == 1
    assert sandbox_record(kata, pod)["containers"] == before
    assert f"{GUEST_SHARED}/{bad}/rootfs" not in agent_mounts(agent)
    assert not os.path.lexists(os.path.join(vm_dir(pod), "shared", bad))
    assert kata.ok("exec", member, "cat", "/marker") == f"{member}-rootfs\n"


@pytest.mark.sandbox
def test_a_container_naming_a_missing_sandbox_fails_in_one_line(kata, tmp_path, new_id):
    cid, missing = new_id(), new_id("nopod")
    p = kata.create(cid, pod_bundle(tmp_path / "b", ["true"], "container", missing))
    assert p.returncode == 1
    assert p.stderr.decode() == (f"create container {cid}: sandbox {missing} (named by the container's CRI "
                                 "annotations) does not exist\n")
    assert kata.run("state", cid).returncode == 1 and not os.path.lexists(vm_dir(missing))

    p = kata.create(cid, make_bundle(tmp_path / "c", ["true"], annotations={f"{CRI}container-type": "pause"}))
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1
    assert "unknown container type 'pause'" in p.stderr.decode()
    assert kata.run("state", cid).returncode == 1
