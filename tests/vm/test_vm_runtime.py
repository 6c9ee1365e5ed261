"""VM tier through the kata-runtime CLI (TCG here): `hypervisor = "qemu"` as a user runs it.

Boots are few (CI has 2 cores; the whole suite must stay under 30 minutes): one `run`, one pod
(a sandbox container and a container joining it, sharing one VM for every check below), and three
short boots that fail or are cut off. The module shares one --root, so the KVM probe's verdict (accel "auto")
is made by the first create and reused by the next.

* `run` of a busybox bundle prints the GUEST's `uname -r`, stdin piped in, exit code kept; the
  empty kernel/initrd/image of the configuration mean the image builder's build;
* the pod: one QEMU and one kata-proxy for both containers, the member's rootfs through 9p, exec
  into both, the spec's host binds through 9p (a read-write and a read-only directory, a file;
  the sandbox container's before the boot, the member's into the running VM) and /dev/shm binds
  on the pod's one guest tmpfs, the guest console in console.log and in kata-proxy's log
  (source=agent), a member deleted while the sandbox runs (its binds unmounted), then kill and
  delete leave no QEMU, proxy, shim or mount;
* a broken image fails with the console's last lines; an agent that does not answer within
  boot_timeout fails at once (no check left waiting); a create killed while the guest boots is
  cleaned up by `delete --force`; a missing kernel or build fails before anything starts.
  Nothing is left after any of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.oci import make_bundle
from tests.support.processes import processes_mentioning, wait_for
from tests.support.runtime import Kata, assert_clean, vm_dir, write_config
from tests.support.guest import missing_requirements

pytestmark = pytest.mark.vm

CRI = "io.kubernetes.cri."
#: TCG on a loaded 2-core CI machine.
BOOT_TIMEOUT = 240.0
TCG_WARNING = "KVM is not usable, using TCG (slow)"


@pytest.fixture(autouse=True)
def _vm_requirements():
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory):
    """One --root for the module: the KVM probe's verdict is cached there by the first create."""
    return tmp_path_factory.mktemp("vm-root") / "root"


def kata_cli(tmp_path, root, **qemu) -> Kata:
    """kata-runtime --debug with `hypervisor = "qemu"` and ``qemu`` as its [hypervisor.qemu]."""
    settings = {"accel": "auto", "default_memory": 1024, "boot_timeout": BOOT_TIMEOUT, **qemu}
    config = write_config(tmp_path / "configuration.toml", **{
        "runtime": {"hypervisor": "qemu"}, "hypervisor.qemu": settings})
    cli = Kata(root, config, tmp_path / "kata.log")
    cli.prefix.append("--debug")
    return cli


@pytest.fixture
def kata_vm(tmp_path, vm_root, guest_image):
    """kata-runtime booting the session's guest image (paths given); every container it made is
    deleted at teardown and must leave nothing behind."""
    cli = kata_cli(tmp_path, vm_root, kernel=guest_image.kernel, initrd=guest_image.initrd, image=guest_image.image)
    yield cli
    cli.cleanup()
    for cid in cli.ids:
        assert_clean(cli, cid)


def log_records(kata: Kata) -> list[dict]:
    try:
        return [json.loads(line) for line in kata.log.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def tcg_warnings(kata: Kata) -> list[str]:
    return [r["msg"] for r in log_records(kata) if r["level"] == "warning" and TCG_WARNING in r["msg"]]


def agent_ready_seconds(kata: Kata) -> float:
    """The runtime's "QEMU started -> the agent answered Check" of its last boot (--debug log)."""
    return [float(r["waited"]) for r in log_records(kata) if r["msg"] == "agent ready"][-1]


def qemus_of(sandbox_id: str) -> list[int]:
    return [pid for pid, cmd in processes_mentioning(vm_dir(sandbox_id) + "/") if "qemu-system" in cmd.split()[0]]


def proxies_of(sandbox_id: str) -> list[int]:
    return [pid for pid, cmd in processes_mentioning(vm_dir(sandbox_id) + "/") if "kata-proxy" in cmd
            or "kata_proxy" in cmd]


#: What the member does with its host binds (kata_runtime.mounts): the host checks the results.
BIND_SCRIPT = ("echo written in $(uname -r) > /data/out; cat /etc/hosts /config/kept; "
               "touch /config/new 2>/dev/null && echo ro-WRITABLE || echo ro-refused; echo in-shm > /dev/shm/mark")


def host_binds(bundle: Path, volumes: Path, name: str, pause: bool = False) -> tuple[Path, Path]:
    """Bind host paths into a bundle as the CRI plugin and docker do: a hosts file (read-only) and
    a pod shm directory on /dev/shm (read-only for the pause container, as CRI's); a container
    (not ``pause``) also gets a read-write ``rw`` and a read-only ``ro`` directory. Returns the
    (hosts file, shm directory) paths."""
    for sub in ("rw", "ro", "shm"):
        (volumes / sub).mkdir(parents=True)
    (volumes / "ro" / "kept").write_text("read-only content\n")
    (volumes / "hosts").write_text(f"10.0.0.7 {name}\n")
    binds = [{"destination": "/etc/hosts", "type": "bind", "source": str(volumes / "hosts"), "options": ["rbind", "ro"]},
             {"destination": "/dev/shm", "type": "bind", "source": str(volumes / "shm"),
              "options": ["rbind", *(["ro"] if pause else []), "nosuid", "nodev", "noexec"]}]
    if not pause:
        binds += [{"destination": "/data", "type": "bind", "source": str(volumes / "rw"), "options": ["rbind"]},
                  {"destination": "/config", "type": "bind", "source": str(volumes / "ro"), "options": ["rbind", "ro"]}]
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/dev/shm"] + binds
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return volumes / "hosts", volumes / "shm"


def shared_mounts_of(cid: str) -> list[str]:
    """Host mount points of a container's shared binds (``<shared dir>/<cid>-<hex>-<name>``)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if f"/shared/{cid}-" in line.split()[4]]


def verdict_file(root: Path) -> Path:
    return root / "kvm-probe.json"


# ----------------------------------------------------------------- boots


def test_run_prints_the_guest_kernel_keeps_stdin_and_the_exit_code(tmp_path, vm_root, image_cache_dir, guest_image,
                                                                     guest_inputs, figures):
    """Empty kernel/initrd/image: the build of `kata-runtime image build` (here the session's, in its
    cache dir) for the current inputs. The first create of the module's root probes KVM."""
    from kata_runtime.image import Recipe, gather_inputs

    if gather_inputs(Recipe()).cache_key() != guest_inputs.cache_key():
        pytest.skip("the agent's code changed during this session: its image is not the session's build")
    kata = kata_cli(tmp_path, vm_root, image_cache_dir=image_cache_dir)
    probed_before = verdict_file(vm_root).exists()
    cid = "run-" + os.urandom(4).hex()
    kata.ids.append(cid)
    bundle = make_bundle(tmp_path / "bundle", ["sh", "-c", "uname -r; cat; echo err >&2; exit 3"])
    try:
        t0 = time.monotonic()
        p = subprocess.Popen(kata.argv("run", "--bundle", str(bundle), cid), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdin.write(b"piped-stdin\n")
        p.stdin.close()
        first = p.stdout.readline()
        first_output = time.monotonic() - t0
        rest, err = p.stdout.read(), p.stderr.read()
        status = p.wait(timeout=BOOT_TIMEOUT)
    finally:
        kata.cleanup()
    assert status == 3, kata.explain(subprocess.CompletedProcess([], status, first + rest, err), ["run"])
    assert first.decode().strip() == guest_image.kernel_version != os.uname().release
    assert (rest, err) == (b"piped-stdin\n", b"err\n")
    assert_clean(kata, cid)
    verdict = json.loads(verdict_file(vm_root).read_text())["verdict"]
    assert len(tcg_warnings(kata)) == (1 if verdict["accel"] == "tcg" else 0)
    if verdict["accel"] == "tcg":
        assert verdict["reason"] in tcg_warnings(kata)[0]
        assert ("cached verdict" in tcg_warnings(kata)[0]) == probed_before
    figures.append(f"kata-runtime run -> first output (TCG, {'cached' if probed_before else 'fresh'} accel "
                   f"verdict): {first_output:.1f} s; QEMU started -> agent answered: {agent_ready_seconds(kata):.1f} s")


def test_a_pod_shares_one_vm(kata_vm, tmp_path, vm_root, figures):
    kata = kata_vm
    verdict_before = verdict_file(vm_root).stat().st_mtime_ns if verdict_file(vm_root).exists() else None
    pod, member = "pod-" + os.urandom(4).hex(), "member-" + os.urandom(4).hex()
    pod_bundle = make_bundle(tmp_path / "pod", ["sleep", "1000"],
                             annotations={f"{CRI}container-type": "sandbox", f"{CRI}sandbox-id": pod})
    _, pod_shm = host_binds(pod_bundle, tmp_path / "pod-volumes", "pod", pause=True)
    assert kata.create(pod, pod_bundle, timeout=BOOT_TIMEOUT).returncode == 0, kata.log_tail()
    kata.ok("start", pod)
    ready = agent_ready_seconds(kata)

    # the accel probe's verdict: made by the module's first create, reused from the cache by this one
    if verdict_before is not None:
        assert verdict_file(vm_root).stat().st_mtime_ns == verdict_before
        assert all("cached verdict" in w for w in tcg_warnings(kata))
    else:
        assert verdict_file(vm_root).exists()
    assert len(tcg_warnings(kata)) <= 1

    member_bundle = make_bundle(tmp_path / "member", ["sh", "-c", "cat /marker; sleep 1000"],
                                annotations={f"{CRI}container-type": "container", f"{CRI}sandbox-id": pod})
    (member_bundle / "rootfs" / "marker").write_text("member-rootfs\n")
    volumes = tmp_path / "member-volumes"
    _, member_shm = host_binds(member_bundle, volumes, "member")
    t0 = time.monotonic()
    assert kata.create(member, member_bundle, out=tmp_path / "member.out").returncode == 0, kata.log_tail()
    joined = time.monotonic() - t0
    kata.ok("start", member)
    wait_for(lambda: (tmp_path / "member.out").read_text() == "member-rootfs\n", what="the member's output")

    # one VM: one QEMU and one kata-proxy, both containers in it, nothing of the member's own
    qemu, proxy = qemus_of(pod), proxies_of(pod)
    assert len(qemu) == 1 and len(proxy) == 1
    assert not os.path.lexists(vm_dir(member)) and not (kata.root / "sandboxes" / member).exists()
    assert [c["id"] for c in json.loads(kata.ok("list", "--format", "json"))] == sorted([pod, member])

    # exec into both: the guest's kernel, each container's own rootfs, exit codes kept
    p = kata.run("exec", member, "sh", "-c", "cat /marker; uname -r; exit 5")
    guest_kernel = p.stdout.decode().splitlines()[1]
    assert p.returncode == 5 and p.stdout.decode().splitlines()[0] == "member-rootfs"
    assert guest_kernel != os.uname().release
    assert kata.run("exec", pod, "cat", "/marker").returncode == 1  # the sandbox container has no /marker

    # the spec's host binds through 9p: the member's shared into the running VM, the pod's before
    # the boot; both containers' /dev/shm is the pod's one guest tmpfs (the host dirs stay empty)
    p = kata.run("exec", member, "sh", "-c", BIND_SCRIPT)
    assert (p.returncode, p.stdout.decode()) == (0, "10.0.0.7 member\nread-only content\nro-refused\n"), p.stderr
    assert (volumes / "rw" / "out").read_text() == f"written in {guest_kernel}\n"
    assert kata.ok("exec", pod, "cat", "/etc/hosts", "/dev/shm/mark") == "10.0.0.7 pod\nin-shm\n"
    assert os.listdir(pod_shm) == os.listdir(member_shm) == []
    assert len(shared_mounts_of(pod)) == 1 and len(shared_mounts_of(member)) == 3

    # the guest console: in console.log, and in kata-proxy's log with source=agent
    console = Path(vm_dir(pod), "console.log").read_text(errors="replace")
    assert "mode=vm pid=1" in console and "found virtio port agent.channel.0" in console
    agent_lines = [line for line in Path(vm_dir(pod), "proxy.log").read_text().splitlines() if "source=agent" in line]
    assert any("mode=vm pid=1" in line for line in agent_lines)

    # the member leaves; the VM runs on
    kata.ok("kill", member, "KILL")
    kata.wait_status(member, "stopped")
    kata.ok("delete", member)
    assert qemus_of(pod) == qemu and proxies_of(pod) == proxy
    assert not os.path.lexists(os.path.join(vm_dir(pod), "shared", member))
    assert shared_mounts_of(member) == [] and sorted(os.listdir(volumes / "ro")) == ["kept"]
    assert not [n for n in os.listdir(os.path.join(vm_dir(pod), "shared")) if n.startswith(member + "-")]
    assert kata.ok("exec", pod, "uname", "-r").strip() == guest_kernel

    # the last container: kill and delete leave no QEMU, proxy, shim, mount or state
    kata.ok("kill", pod, "KILL")
    kata.wait_status(pod, "stopped")
    t0 = time.monotonic()
    kata.ok("delete", pod)
    deleted = time.monotonic() - t0
    for cid in (pod, member):
        assert_clean(kata, cid, timeout=0)
    figures.append(f"pod: QEMU started -> agent answered {ready:.1f} s; a container joins the running VM in "
                   f"{joined:.2f} s (create); delete of the last container (DestroySandbox, QMP quit) {deleted:.2f} s")


def test_a_broken_image_fails_with_the_consoles_last_lines(tmp_path, vm_root, guest_image):
    broken = tmp_path / "rootfs.img"
    broken.write_bytes(os.urandom(1 << 20))
    kata = kata_cli(tmp_path, vm_root, kernel=guest_image.kernel, initrd=guest_image.initrd, image=str(broken),
                    accel="tcg")
    cid = "broken-" + os.urandom(4).hex()
    kata.ids.append(cid)
    p = kata.run("run", "--bundle", str(make_bundle(tmp_path / "b", ["true"])), cid, timeout=BOOT_TIMEOUT)
    message = p.stderr.decode()
    assert p.returncode == 1 and message.count("\n") == 1, message
    assert message.startswith(f"create container {cid}: waiting for the agent to answer: qemu sandbox {cid}: "
                              "guest boot failed: QEMU exited before the agent answered; console (")
    assert "kata-init: cannot mount the guest image /dev/vda" in message
    assert_clean(kata, cid, timeout=0)


def test_an_agent_that_does_not_answer_in_time_fails_at_once(tmp_path, vm_root, guest_image):
    """boot_timeout passes while the guest still boots: the runtime's pending Check is cancelled
    (not waited out), QEMU and kata-proxy are stopped, and the create fails in about that time."""
    kata = kata_cli(tmp_path, vm_root, kernel=guest_image.kernel, initrd=guest_image.initrd,
                    image=guest_image.image, accel="tcg", boot_timeout=2.0)
    cid = "slow-" + os.urandom(4).hex()
    kata.ids.append(cid)
    t0 = time.monotonic()
    p = kata.run("run", "--bundle", str(make_bundle(tmp_path / "b", ["true"])), cid, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 1, kata.explain(p, ["run"])
    assert f"qemu sandbox {cid}: guest boot failed: the agent did not answer within 2s" in p.stderr.decode()
    assert took < 2.0 + 15.0
    assert_clean(kata, cid, timeout=0)


def test_a_create_killed_while_the_guest_boots_leaves_nothing_after_delete_force(tmp_path, vm_root, guest_image):
    """The runtime dies (SIGKILL) with QEMU and kata-proxy started: `delete --force` finds QEMU by
    its pid file (checked against its command line) and kata-proxy by its record."""
    kata = kata_cli(tmp_path, vm_root, kernel=guest_image.kernel, initrd=guest_image.initrd,
                    image=guest_image.image, accel="tcg")
    cid = "killed-" + os.urandom(4).hex()
    kata.ids.append(cid)
    runtime = subprocess.Popen(kata.argv("create", "--bundle", str(make_bundle(tmp_path / "b", ["true"])), cid),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: qemus_of(cid) and proxies_of(cid), timeout=60, what="QEMU and kata-proxy")
    finally:
        runtime.kill()
        runtime.wait()
    assert qemus_of(cid) and proxies_of(cid)  # orphaned, in sessions of their own
    kata.ok("delete", "--force", cid)
    assert_clean(kata, cid, timeout=0)


# -------------------------------------------------------------- no boot


@pytest.mark.parametrize("what", ["kernel", "build"])
def test_a_missing_kernel_or_build_fails_before_anything_starts(tmp_path, vm_root, guest_image, what):
    if what == "kernel":
        kata = kata_cli(tmp_path, vm_root, kernel=str(tmp_path / "no-vmlinux"), initrd=guest_image.initrd,
                        image=guest_image.image, accel="tcg")
        expected = f"kernel {tmp_path}/no-vmlinux does not exist or is unreadable"
    else:
        kata = kata_cli(tmp_path, vm_root, image_cache_dir=str(tmp_path / "empty-cache"), accel="tcg")
        expected = "finding the sandbox's qemu guest: no guest image of this kata-py (key "
    cid = "missing-" + os.urandom(4).hex()
    kata.ids.append(cid)
    p = kata.run("run", "--bundle", str(make_bundle(tmp_path / "b", ["true"])), cid)
    message = p.stderr.decode()
    assert p.returncode == 1 and message.count("\n") == 1 and expected in message, message
    if what == "build":
        assert f"`kata-runtime image build --cache-dir {tmp_path}/empty-cache`" in message
    assert_clean(kata, cid, timeout=0)


def test_a_cached_vm_runs_a_container_without_a_boot(tmp_path, vm_root, guest_image, figures):
    """The VM cache (kata_runtime.vmcache) with QEMU: `factory init` boots a VM ahead of time,
    `run` takes it (no boot of its own: the guest's kernel answers at once), the server boots
    the next one; `factory destroy` stops it; nothing is left."""
    from kata_runtime import vmcache
    from tests.support.processes import Proc, command

    endpoint = str(tmp_path / "cache.sock")
    kata = kata_cli(tmp_path, vm_root, kernel=guest_image.kernel, initrd=guest_image.initrd, image=guest_image.image)
    text = kata.config.read_text() + f'[factory]\nvm_cache_number = 1\nvm_cache_endpoint = "{endpoint}"\n'
    kata.config.write_text(text)
    factory = [*command("kata-runtime"), "--root", str(vm_root), "--kata-config", str(kata.config), "factory"]
    with open(tmp_path / "factory.out", "wb") as out:
        server = Proc(subprocess.Popen([*factory, "init"], stdout=out, stderr=subprocess.STDOUT), "factory init")
    held = []
    try:
        def ready():
            assert server.alive(), (tmp_path / "factory.out").read_text()
            try:
                return vmcache.status(endpoint)["ready"]
            except vmcache.CacheError:
                return None
        wait_for(ready, BOOT_TIMEOUT, "a cached VM")
        held = [d for d in os.listdir(vm_dir("")) if d.startswith(vmcache.ID_PREFIX)]
        cid = "cached-" + os.urandom(4).hex()
        kata.ids.append(cid)
        bundle = make_bundle(tmp_path / "bundle", ["uname", "-r"])
        t0 = time.monotonic()
        p = kata.run("run", "--bundle", str(bundle), cid, timeout=BOOT_TIMEOUT)
        took = time.monotonic() - t0
        assert p.returncode == 0, kata.explain(p, ["run"])
        assert p.stdout.decode().strip() == guest_image.kernel_version != os.uname().release
        taken = [r["guest"] for r in log_records(kata) if r["msg"] == "VM cache: sandbox taken"]
        assert taken and taken[0] in held
        assert not [r for r in log_records(kata) if r["msg"] == "agent ready"]  # no boot of its own
        assert_clean(kata, cid)
        assert not os.path.lexists(vm_dir(taken[0]))
        figures.append(f"kata-runtime run -> exit with a cached VM (TCG): {took:.1f} s")
    finally:
        destroyed = subprocess.run([*factory, "destroy"], capture_output=True, text=True, timeout=BOOT_TIMEOUT)
        server.stop(timeout=BOOT_TIMEOUT)
    assert destroyed.returncode == 0, destroyed
    left = [d for d in os.listdir(vm_dir("")) if d.startswith(vmcache.ID_PREFIX)]
    assert not left and not processes_mentioning(vm_dir(vmcache.ID_PREFIX)), left
