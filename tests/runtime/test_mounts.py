"""A spec's host bind mounts reach the guest through the sandbox's shared dir (kata_runtime.mounts).

Units: which mounts are shared, which stay the guest's own, /dev/shm on the sandbox shm, the names
and flags of a share, and the host side of one share (read-only kept, nothing left after). Process
tier (marked ``sandbox``): a container with a read-write and a read-only host directory, a host
file and a /dev/shm bind, alone and as a pod member joining a running sandbox (whose agent's
mount namespace host mounts made later do not reach); delete and a failed create leave no mount
in the shared dir, on the host or in the agent's namespace; a bind of a missing host path fails
in one line before anything is made.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading

import pytest

from kata_oci import GUEST_SANDBOX_SHM, GUEST_SHARED_DIR, SpecError
from kata_runtime import mounts
from tests.support.oci import make_bundle
from tests.support.processes import processes_mentioning, runs_kata_agent, wait_for
from tests.support.runtime import vm_dir

CRI = "io.kubernetes.cri."
BUNDLE = "/bundles/b"


# ------------------------------------------------------------------ units


def bind(destination, source, *options, kind="bind"):
    return {"destination": destination, "type": kind, "source": source, "options": list(options)}


@pytest.mark.parametrize("mount, kind", [
    ({"destination": "/proc", "type": "proc", "source": "proc"}, mounts.GUEST),
    ({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=65536k"]}, mounts.GUEST),
    ({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"}, mounts.GUEST),
    ({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}, mounts.GUEST),
    (bind("/sys", "/sys", "rbind", "ro", kind="none"), mounts.GUEST),  # rootless: type none, an rbind option
    (bind("/proc/x", "/proc/self"), mounts.GUEST),
    (bind("/dev/null", "/dev/null"), mounts.GUEST),  # a host device node
    (bind("/dev", "/dev", "rbind"), mounts.GUEST),
    (bind("/dev/shm", "/var/lib/cri/sandboxes/x/shm", "rbind", "ro"), mounts.SHM),
    (bind("/dev/shm", "/dev/shm", "rbind"), mounts.SHM),  # host IPC: the guest has its own
    (bind("/etc/hosts", "/etc/hosts", "rbind", "ro"), mounts.SHARE),
    (bind("/data", "/tmp", "rbind"), mounts.SHARE),
    (bind("/data", "/no/such/dir"), mounts.SHARE),  # plan_shares refuses it
    ({"destination": "/data", "type": "none", "source": "/tmp", "options": ["bind"]}, mounts.SHARE),
])
def test_mount_kind_follows_kata_1x(mount, kind):
    assert mounts.mount_kind(mount, BUNDLE) == kind


def test_plan_shares_names_each_shared_mount_and_keeps_its_flags(tmp_path):
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    spec = {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       bind("/etc/hosts", str(tmp_path / "hosts"), "rbind", "ro"),
                       bind("/data", str(tmp_path), "bind", "ro", "rw"),
                       bind("/dev/shm", str(tmp_path), "rbind"),
                       bind("/rel", "hosts", "rbind")]}  # relative: to the bundle
    cid = "c" * 64
    shares = mounts.plan_shares(spec, cid, str(tmp_path))
    assert [(s["index"], s["source"], s["destination"], s["readonly"], s["recursive"]) for s in shares] == [
        (1, str(tmp_path / "hosts"), "/etc/hosts", True, True),
        (2, str(tmp_path), "/data", False, False),  # the last of ro/rw wins
        (4, str(tmp_path / "hosts"), "/rel", False, True)]
    for share, base in zip(shares, ("hosts", "data", "rel")):
        prefix, random, rest = share["name"][:64], share["name"][65:81], share["name"][82:]
        assert (prefix, share["name"][64], share["name"][81], rest) == (cid, "-", "-", base)
        assert int(random, 16) >= 0 and len(random) == 16
    assert len({s["name"] for s in shares}) == 3
    long = mounts.plan_shares({"mounts": [bind("/" + "x" * 300, str(tmp_path))]}, cid, "/")
    assert len(os.fsencode(long[0]["name"])) == mounts.NAME_MAX


def test_a_bind_of_a_missing_host_path_is_refused_in_one_line():
    spec = {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, bind("/data", "/no/such/dir")]}
    with pytest.raises(SpecError) as info:
        mounts.plan_shares(spec, "c1", BUNDLE)
    assert str(info.value) == "config.json: mounts[1] (/data): bind source /no/such/dir does not exist"


def test_guest_mounts_point_shares_at_the_shared_dir_and_dev_shm_at_the_sandbox_shm(tmp_path):
    spec = {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       bind("/etc/hosts", str(tmp_path), "rbind", "ro"),
                       bind("/dev/shm", "/var/lib/cri/shm", "rbind", "ro", "nosuid")]}
    shares = mounts.plan_shares(spec, "c1", "/")
    out = mounts.guest_mounts(spec, shares, sandbox_shm=True)
    assert out[0] == spec["mounts"][0]
    assert out[1] == bind("/etc/hosts", GUEST_SHARED_DIR + shares[0]["name"], "rbind", "ro")
    assert out[2] == bind("/dev/shm", GUEST_SANDBOX_SHM, "rbind", "ro", "nosuid")
    alone = mounts.guest_mounts(spec, shares, sandbox_shm=False)[2]  # a sandbox made without a shm
    assert (alone["type"], alone["source"]) == ("tmpfs", "shm")
    assert alone["options"] == [*mounts.SHM_OPTIONS, f"size={mounts.DEFAULT_SHM_SIZE}", "ro"]
    assert spec["mounts"][1]["source"] == str(tmp_path)  # the spec itself is not changed


def test_the_sandbox_shm_is_the_size_of_the_bound_filesystem(tmp_path):
    st = os.statvfs("/dev/shm")
    assert mounts.sandbox_shm_size({"mounts": [bind("/dev/shm", "/dev/shm", "rbind")]}, "/") == \
        st.f_blocks * st.f_frsize
    tmpfs = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=1k"]}
    assert mounts.sandbox_shm_size({"mounts": [tmpfs]}, "/") == mounts.DEFAULT_SHM_SIZE
    assert mounts.sandbox_shm_size({}, "/") == mounts.DEFAULT_SHM_SIZE


def test_share_binds_read_only_keeping_the_sources_flags_and_unshare_leaves_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    shared = tmp_path / "shared"
    shared.mkdir()
    source = tmp_path / "src"
    source.mkdir()
    (source / "in").write_text("host\n")
    # a source on a nosuid,nodev mount (a remount that named no flags would clear them)
    flagged = tmp_path / "flagged"
    flagged.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,size=1m", "tmpfs", str(flagged)], check=True)
    try:
        spec = {"mounts": [bind("/ro", str(source), "rbind", "ro"), bind("/rw", str(source), "rbind"),
                           bind("/file", str(source / "in"), "bind", "ro"), bind("/f", str(flagged), "bind", "ro")]}
        ro, rw, file_, flagged_share = [mounts.share(s, str(shared)) for s in mounts.plan_shares(spec, "c1", "/")]
        assert open(file_).read() == "host\n" and os.path.isfile(file_)
        with pytest.raises(OSError) as info:
            open(os.path.join(ro, "new"), "w")
        assert info.value.errno == errno.EROFS
        with open(os.path.join(rw, "new"), "w") as f:
            f.write("from the share\n")
        assert (source / "new").read_text() == "from the share\n"
        flags = os.statvfs(flagged_share).f_flag
        assert (flags & os.ST_RDONLY, flags & os.ST_NOSUID, flags & os.ST_NODEV) == (
            os.ST_RDONLY, os.ST_NOSUID, os.ST_NODEV)
        assert not os.statvfs(str(source)).f_flag & os.ST_RDONLY  # the host's source stays writable
        for path in (ro, rw, file_, flagged_share):
            mounts.unshare(path)
            mounts.unshare(path)  # twice: gone is fine
        assert os.listdir(shared) == [] and mounts.mounts_under(str(shared)) == []
        assert sorted(os.listdir(source)) == ["in", "new"]
    finally:
        mounts.unmount(str(shared))
        mounts.unmount(str(flagged))


def test_share_of_a_failing_bind_leaves_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    shared = tmp_path / "shared"
    shared.mkdir()
    entry = {"name": "c1-x-data", "source": str(tmp_path / "gone"), "readonly": False, "recursive": True}
    with pytest.raises(mounts.MountError, match="bind mount of .*/gone on .*/shared/c1-x-data"):
        mounts.share(entry, str(shared))
    assert os.listdir(shared) == []


# ---------------------------------------------------------------- process tier


def add_mounts(bundle, *entries) -> None:
    """Append mounts to a bundle's config.json; a /dev/shm entry replaces the bundle's tmpfs one."""
    config = json.loads((bundle / "config.json").read_text())
    dests = {m["destination"] for m in entries}
    config["mounts"] = [m for m in config["mounts"] if m["destination"] not in dests] + list(entries)
    (bundle / "config.json").write_text(json.dumps(config, indent=1))


def host_volumes(tmp_path, name: str):
    """A host directory to write to, one to read only, a file and a pod shm directory (as the CRI
    plugin's <state>/sandboxes/<id>/shm). Returns (rw, ro, file, shm) paths."""
    rw, ro, shm = tmp_path / f"{name}-rw", tmp_path / f"{name}-ro", tmp_path / f"{name}-shm"
    for d in (rw, ro, shm):
        d.mkdir()
    (ro / "kept").write_text("read-only content\n")
    hosts = tmp_path / f"{name}-hosts"
    hosts.write_text(f"10.0.0.7 {name}\n")
    return rw, ro, hosts, shm


def with_volumes(bundle, rw, ro, hosts, shm):
    add_mounts(bundle, bind("/data", str(rw), "rbind"), bind("/config", str(ro), "rbind", "ro"),
               bind("/etc/hosts", str(hosts), "rbind", "ro"),
               bind("/dev/shm", str(shm), "rbind", "nosuid", "nodev", "noexec"))
    return bundle


#: What the container does with its volumes (its last line printed after every write): the host
#: reads the results.
VOLUME_SCRIPT = ("echo in-shm > /dev/shm/mark; echo written-in-$(hostname) > /data/out; cat /etc/hosts; "
                 "cat /config/kept; touch /config/new 2>/dev/null && echo ro-WRITABLE || echo ro-refused; sleep 1000")


def shared_entries(sandbox_id: str, cid: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(vm_dir(sandbox_id), "shared")) if n.startswith(cid + "-"))


def host_mounts_of(cid: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if f"/shared/{cid}-" in line.split()[4]]


def agents_of(sandbox_id: str) -> list[int]:
    return [pid for pid, cmd in processes_mentioning(vm_dir(sandbox_id) + "/")
            if runs_kata_agent(cmd) and not cmd.split()[0].endswith("unshare")]


def agent_mounts_of(agent: int, cid: str) -> list[str]:
    with open(f"/proc/{agent}/mountinfo") as f:
        return [line.split()[4] for line in f if f"{GUEST_SHARED_DIR}{cid}-" in line.split()[4]]


def check_volumes(kata, cid: str, out, rw, shm, hostname: str) -> None:
    """The container wrote to its read-write volume, read the file and the read-only volume, was
    refused a write there, and its /dev/shm is the guest's (not the host directory)."""
    wait_for(lambda: "ro-" in out.read_text(), what=f"{cid}'s last line")
    assert out.read_text() == f"10.0.0.7 {hostname}\nread-only content\nro-refused\n"
    assert (rw / "out").read_text() == f"written-in-{hostname}\n"
    assert os.listdir(shm) == []  # the sandbox shm is a guest tmpfs
    assert kata.ok("exec", cid, "cat", "/dev/shm/mark") == "in-shm\n"


@pytest.mark.sandbox
def test_a_containers_host_binds_reach_it_through_the_shared_dir(kata, tmp_path, new_id):
    cid = new_id()
    rw, ro, hosts, shm = host_volumes(tmp_path, "solo")
    bundle = with_volumes(make_bundle(tmp_path / "b", ["sh", "-c", VOLUME_SCRIPT], hostname="solo"), rw, ro, hosts, shm)
    out = tmp_path / "out"
    assert kata.create(cid, bundle, out=out).returncode == 0, kata.log_tail()
    kata.ok("start", cid)
    check_volumes(kata, cid, out, rw, shm, "solo")

    # three shares (data, config, hosts; /dev/shm is not one), each mounted once
    entries = shared_entries(cid, cid)
    assert sorted(e.rsplit("-", 1)[-1] for e in entries) == ["config", "data", "hosts"]
    assert sorted(os.path.basename(m) for m in host_mounts_of(cid)) == entries
    record = json.loads((kata.root / "containers" / cid / "state.json").read_text())
    assert sorted(s["name"] for s in record["shared_mounts"]) == entries  # for delete

    kata.ok("kill", cid, "KILL")
    kata.wait_status(cid, "stopped")
    kata.ok("delete", cid)
    assert host_mounts_of(cid) == [] and not os.path.lexists(vm_dir(cid))
    assert sorted(os.listdir(ro)) == ["kept"] and sorted(os.listdir(rw)) == ["out"]


def start_pod(kata, tmp_path, new_id):
    pod = new_id("pod")
    b = make_bundle(tmp_path / "pod", ["sleep", "1000"], annotations={f"{CRI}container-type": "sandbox",
                                                                    f"{CRI}sandbox-id": pod})
    _, _, _, shm = host_volumes(tmp_path, "pod")
    add_mounts(b, bind("/dev/shm", str(shm), "rbind", "ro", "nosuid", "nodev", "noexec"))  # CRI's pause
    assert kata.create(pod, b).returncode == 0, kata.log_tail()
    kata.ok("start", pod)
    return pod


def member_bundle(tmp_path, name: str, pod: str, args):
    bundle = make_bundle(tmp_path / name, args, hostname=name,
                         annotations={f"{CRI}container-type": "container", f"{CRI}sandbox-id": pod})
    volumes = host_volumes(tmp_path, name)
    return with_volumes(bundle, *volumes), volumes


@pytest.mark.sandbox
def test_a_pod_members_host_binds_reach_the_running_sandbox_and_leave_with_it(kata, tmp_path, new_id):
    pod = start_pod(kata, tmp_path, new_id)
    agent = agents_of(pod)[0]
    member = new_id("member")
    bundle, (rw, ro, hosts, shm) = member_bundle(tmp_path, "member", pod, ["sh", "-c", VOLUME_SCRIPT])
    out = tmp_path / "member.out"
    assert kata.create(member, bundle, out=out).returncode == 0, kata.log_tail()
    kata.ok("start", member)
    check_volumes(kata, member, out, rw, shm, "member")

    # mounted on the host and carried into the agent's namespace; the pod shares one /dev/shm
    assert len(host_mounts_of(member)) == 3 and len(agent_mounts_of(agent, member)) == 3
    assert kata.ok("exec", pod, "cat", "/dev/shm/mark") == "in-shm\n"
    p = kata.run("exec", pod, "touch", "/dev/shm/x")  # the pause container's /dev/shm is read-only (CRI)
    assert p.returncode != 0

    kata.ok("kill", member, "KILL")
    kata.wait_status(member, "stopped")
    kata.ok("delete", member)
    assert host_mounts_of(member) == [] and agent_mounts_of(agent, member) == []
    assert shared_entries(pod, member) == []
    assert agents_of(pod) == [agent] and kata.ok("exec", pod, "cat", "/dev/shm/mark") == "in-shm\n"


@pytest.mark.sandbox
def test_a_failed_join_with_host_binds_leaves_no_mount(kata, tmp_path, new_id):
    pod = start_pod(kata, tmp_path, new_id)
    agent = agents_of(pod)[0]
    bad = new_id("bad")
    bundle, _ = member_bundle(tmp_path, "bad", pod, ["/no/such/program"])
    p = kata.create(bad, bundle)
    assert p.returncode == 1
    assert f"create container {bad}: creating the container in the agent (CreateContainer)" in p.stderr.decode()
    assert host_mounts_of(bad) == [] and agent_mounts_of(agent, bad) == [] and shared_entries(pod, bad) == []
    assert kata.run("state", bad).returncode == 1


@pytest.mark.sandbox
def test_a_failed_create_with_host_binds_leaves_nothing(kata, tmp_path, new_id):
    cid = new_id()
    bundle = with_volumes(make_bundle(tmp_path / "b", ["/no/such/program"]), *host_volumes(tmp_path, "x"))
    p = kata.create(cid, bundle)
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1, p.stderr
    assert host_mounts_of(cid) == [] and not os.path.lexists(vm_dir(cid))


@pytest.mark.sandbox
def test_a_bind_of_a_missing_host_path_fails_before_anything_is_made(kata, tmp_path, new_id):
    cid = new_id()
    bundle = make_bundle(tmp_path / "b", ["true"])
    add_mounts(bundle, bind("/data", str(tmp_path / "nope"), "rbind"))
    p = kata.create(cid, bundle)
    index = len(json.loads((bundle / "config.json").read_text())["mounts"]) - 1
    assert (p.returncode, p.stderr.decode()) == (
        1, f"config.json: mounts[{index}] (/data): bind source {tmp_path / 'nope'} does not exist\n")
    assert kata.run("state", cid).returncode == 1 and not os.path.lexists(vm_dir(cid))
    assert not (kata.root / "sandboxes" / cid).exists()


@pytest.mark.sandbox
def test_members_joining_at_once_each_get_their_own_shares(kata, tmp_path, new_id):
    pod = start_pod(kata, tmp_path, new_id)
    members = [new_id("m") for _ in range(2)]
    results = {}

    def join(m):
        bundle, volumes = member_bundle(tmp_path, m, pod, ["sh", "-c", VOLUME_SCRIPT])
        results[m] = (kata.create(m, bundle, out=tmp_path / f"{m}.out"), volumes)

    threads = [threading.Thread(target=join, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in members:
        p, (rw, ro, hosts, shm) = results[m]
        assert p.returncode == 0, kata.explain(p, ["create", m])
        kata.ok("start", m)
        check_volumes(kata, m, tmp_path / f"{m}.out", rw, shm, m)
    kata.ok("delete", "--force", pod)  # the sandbox container: the whole pod stops, every share goes
    for m in members:
        assert host_mounts_of(m) == []
        kata.ok("delete", m)
