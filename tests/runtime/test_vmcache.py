"""The VM cache (kata_runtime.vmcache, ``kata-runtime factory``), Kata 1.x's VMCache.

Units: the ``[factory]`` section. Process tier (``sandbox``): a real ``factory init`` server
holding started process sandboxes; ``kata-runtime run`` takes one (the container runs in the
agent the server started, with the spec's hostname), the server starts the next one at nice 19
(its sessions' autogroups too) and the taken one runs at nice 0; a failed create stops the sandbox it took; a create falls
back to its own sandbox when nothing serves the endpoint or the configurations differ; a
server that is stopped stops what it holds, and ``factory destroy`` cleans up after one that
was killed. Nothing may be left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from kata_runtime import vmcache
from kata_runtime.config import ConfigError, parse
from kata_runtime.sandbox import VM_ROOT
from tests.support.oci import make_bundle
from tests.support.processes import Proc, command, processes_mentioning, wait_for
from tests.support.runtime import Kata, assert_clean, mounts_mentioning, sandbox_cgroups, write_config


# ------------------------------------------------------------------ units


def test_the_factory_section_defaults_to_no_cache_on_kata_1x_endpoint():
    values = parse({}, "c.toml")["factory"]
    assert values == {"enable_template": False, "vm_cache_number": 0,
                      "vm_cache_endpoint": "/var/run/kata-containers/cache.sock"}


@pytest.mark.parametrize("table, message", [
    ({"vm_cache_number": -1}, r"\[factory\] vm_cache_number: must be an integer >= 0"),
    ({"vm_cache_number": "2"}, r"\[factory\] vm_cache_number: must be an integer"),
    ({"vm_cache_endpoint": "cache.sock"}, r"\[factory\] vm_cache_endpoint: must be an absolute path"),
    ({"enable_template": True}, r"\[factory\] enable_template: VM templating \(use vm_cache_number\) is not supported"),
    ({"template_path": "/x"}, r"\[factory\] template_path: unknown key"),
])
def test_bad_factory_settings_are_one_line_errors_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse({"factory": table}, "c.toml")


def test_descendants_finds_a_whole_process_tree():
    from kata_runtime.procs import descendants

    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        found = wait_for(lambda: (lambda d: d if len(d) == 3 else None)(descendants(proc.pid)), 10, "two children")
        assert found[0] == proc.pid and len(set(found)) == 3
    finally:
        for pid in reversed(descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------ process tier


class CacheServer:
    """``kata-runtime factory init`` with its own --root and configuration."""

    def __init__(self, tmp, number: int = 1, **sections):
        self.endpoint = str(tmp / "cache.sock")
        self.root = tmp / "factory-root"
        self.config = write_config(tmp / "factory.toml", factory={"vm_cache_number": number,
                                                                  "vm_cache_endpoint": self.endpoint}, **sections)
        self.argv = [*command("kata-runtime"), "--root", str(self.root), "--kata-config", str(self.config)]
        self.out = tmp / "factory.out"
        self.proc: Proc | None = None
        #: Every sandbox id this server was seen holding.
        self.seen: set[str] = set()

    def start(self, *init_args, prefix=()) -> "CacheServer":
        with open(self.out, "ab") as out:
            self.proc = Proc(subprocess.Popen([*prefix, *self.argv, "factory", "init", *init_args], stdout=out,
                                              stderr=subprocess.STDOUT), "factory init")
        return self

    def get_base_vm(self) -> dict:
        """GetBaseVM as a taker that never takes the sandbox over: its sandbox JSON."""
        from katapb import cache_pb2

        vm = cache_pb2.GrpcVM.FromString(vmcache._call(self.endpoint, vmcache.GET_BASE_VM, 5))
        return json.loads(vm.hypervisor)

    def ready(self, count: int = 1, timeout: float = 60) -> list[dict]:
        """The Status' ready sandboxes once there are ``count``."""
        def got():
            assert self.proc is None or self.proc.alive(), self.out.read_text()
            try:
                ready = vmcache.status(self.endpoint)["ready"]
            except vmcache.CacheError:
                return None
            self.held_dirs()
            return ready if len(ready) == count else None
        return wait_for(got, timeout, f"{count} cached sandboxes")

    def factory(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, "factory", *args], capture_output=True, text=True, timeout=120)

    def held_dirs(self) -> list[str]:
        """Ids of the sandboxes this server holds (its records: other servers may run on the host)."""
        records = self.root / vmcache.RECORDS
        ids = sorted(p.stem for p in records.glob("*.json")) if records.is_dir() else []
        self.seen.update(ids)
        return ids


@pytest.fixture
def cache(tmp_path):
    """A cache server (not started); at teardown it is stopped and what it held must be gone."""
    server = CacheServer(tmp_path)
    yield server
    if server.proc is not None:
        server.proc.stop(timeout=30)
    server.factory("destroy")
    assert not server.held_dirs(), "records of cached sandboxes left"
    for guest in server.seen:
        assert_guest_gone(guest)


def kata_with_cache(tmp_path, server: CacheServer, **sections) -> Kata:
    config = write_config(tmp_path / "configuration.toml", factory={"vm_cache_number": 1,
                                                                    "vm_cache_endpoint": server.endpoint}, **sections)
    kata = Kata(tmp_path / "root", config, tmp_path / "kata.log")
    kata.prefix.append("--debug")
    return kata


def sandbox_record(kata: Kata, cid: str) -> dict:
    return json.loads((kata.root / "sandboxes" / cid / "sandbox.json").read_text())


def nice_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def autogroup_nice(pid: int) -> int | None:
    """The nice of ``pid``'s session autogroup ("/autogroup-N nice X"), None without autogroups."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split()[-1])
    except OSError:
        return None


def assert_guest_gone(guest_id: str) -> None:
    path = os.path.join(VM_ROOT, guest_id)
    wait_for(lambda: not os.path.lexists(path) and not processes_mentioning(path + "/")
             and not mounts_mentioning(path + "/") and not sandbox_cgroups(guest_id), 10,
             f"{path}, its processes, mounts and cgroups to be gone")


@pytest.mark.sandbox
def test_run_takes_a_cached_sandbox_and_the_cache_refills(tmp_path, cache):
    cache.start()
    (held,) = cache.ready()
    (held_dir,) = cache.held_dirs()
    kata = kata_with_cache(tmp_path, cache)
    bundle = make_bundle(tmp_path / "bundle", ["sh", "-c", "hostname; cat /proc/1/cmdline; echo; exit 3"])
    p = kata.run("run", "--bundle", str(bundle), "c-cached")
    kata.ids.append("c-cached")
    assert p.returncode == 3, kata.explain(p, ["run"])
    lines = p.stdout.decode().splitlines()
    hostname = json.loads((bundle / "config.json").read_text())["hostname"]
    assert lines[0] == hostname and lines[1].startswith("sh"), lines  # the spec's hostname, via CreateSandbox
    log = kata.log.read_text()
    taken = [json.loads(line) for line in log.splitlines() if "VM cache: sandbox taken" in line]
    assert taken and taken[0]["guest"] == held_dir, log
    (refilled,) = cache.ready()
    assert refilled["pid"] != held["pid"]
    assert nice_of(refilled["pid"]) == vmcache.WAITING_NICE
    # its own session's autogroup too: else, across sessions, its nice would not count
    assert autogroup_nice(refilled["pid"]) in (vmcache.WAITING_NICE, None)
    assert_clean(kata, "c-cached")  # run deleted it, as runc run does
    assert_guest_gone(taken[0]["guest"])


@pytest.mark.sandbox
def test_a_taken_sandbox_runs_at_nice_0_and_a_pod_member_joins_it(tmp_path, cache):
    cache.start()
    (held,) = cache.ready()
    kata = kata_with_cache(tmp_path, cache)
    bundle = make_bundle(tmp_path / "pod", ["sleep", "1000"])
    assert kata.create("pod-s", bundle).returncode == 0, kata.log_tail()
    record = sandbox_record(kata, "pod-s")
    assert record["hypervisor"]["process"]["pid"] == held["pid"]
    guest = record["hypervisor"]["guest_id"]
    assert record["vm_dir"] == os.path.join(VM_ROOT, guest)
    assert all(nice_of(pid) == 0 for pid in vmcache.sandbox_pids(record))
    assert all(autogroup_nice(pid) in (0, None) for pid in vmcache.sandbox_pids(record))
    kata.ok("start", "pod-s")
    member = make_bundle(tmp_path / "member", ["echo", "member ran"])
    spec = json.loads((member / "config.json").read_text())
    spec["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod-s"}
    (member / "config.json").write_text(json.dumps(spec))
    out = tmp_path / "member.out"
    assert kata.create("pod-m", member, out=out).returncode == 0, kata.log_tail()
    kata.ok("start", "pod-m")
    wait_for(lambda: b"member ran" in out.read_bytes(), 20, "the member's output")
    kata.ok("delete", "--force", "pod-m")
    kata.ok("delete", "--force", "pod-s")
    assert_clean(kata, "pod-s")
    assert_guest_gone(guest)


@pytest.mark.sandbox
def test_a_failed_create_stops_the_sandbox_it_took(tmp_path, cache):
    cache.start()
    cache.ready()
    kata = kata_with_cache(tmp_path, cache)
    bundle = make_bundle(tmp_path / "bundle", ["/no/such/program"])
    p = kata.create("c-fails", bundle)
    assert p.returncode == 1
    assert "no/such/program" in p.stderr.decode(), p.stderr
    taken = [json.loads(line) for line in kata.log.read_text().splitlines() if "VM cache: sandbox taken" in line]
    assert taken, kata.log_tail()
    assert_clean(kata, "c-fails")
    assert_guest_gone(taken[0]["guest"])
    cache.ready()


@pytest.mark.sandbox
def test_without_a_server_or_with_another_configuration_create_starts_its_own(tmp_path, cache):
    kata = kata_with_cache(tmp_path, cache)
    bundle = make_bundle(tmp_path / "bundle", ["sleep", "1000"])
    assert kata.create("c-no-server", bundle).returncode == 0, kata.log_tail()
    assert sandbox_record(kata, "c-no-server")["vm_dir"] == os.path.join(VM_ROOT, "c-no-server")
    warnings = [json.loads(line)["msg"] for line in kata.log.read_text().splitlines() if '"warning"' in line]
    assert any("load vm factory failed" in w and cache.endpoint in w for w in warnings), warnings
    kata.ok("delete", "--force", "c-no-server")

    cache.start()
    cache.ready()
    (tmp_path / "other").mkdir()
    other = kata_with_cache(tmp_path / "other", cache, **{"proxy.kata": {"debug": False}})
    assert other.create("c-other-config", bundle).returncode == 0, other.log_tail()
    warnings = [json.loads(line)["msg"] for line in other.log.read_text().splitlines() if '"warning"' in line]
    assert any("started with another configuration ([proxy.kata] debug differ)" in w for w in warnings), warnings
    assert sandbox_record(other, "c-other-config")["vm_dir"] == os.path.join(VM_ROOT, "c-other-config")
    cache.ready()  # still held
    other.ok("delete", "--force", "c-other-config")
    assert_clean(kata, "c-no-server")
    assert_clean(other, "c-other-config")


@pytest.mark.sandbox
def test_stopping_the_server_stops_what_it_holds_and_destroy_cleans_after_a_killed_one(tmp_path, cache):
    cache.start()
    (first,) = cache.ready()
    again = subprocess.run([*cache.argv, "factory", "init"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and again.stderr.strip() == f"a VM cache server already serves {cache.endpoint}"
    status = cache.factory("status")
    assert status.returncode == 0 and "1 of 1 sandboxes ready" in status.stdout, status
    held = cache.held_dirs()
    destroyed = cache.factory("destroy")
    assert destroyed.returncode == 0 and destroyed.stdout.strip() == "vm factory destroyed", destroyed
    assert cache.proc.wait(30) == 0
    assert not [g for g in held if os.path.lexists(os.path.join(VM_ROOT, g))]  # stopped before destroy returned
    for guest in held:
        assert_guest_gone(guest)
    assert not os.path.exists(cache.endpoint)

    cache.start()
    cache.ready()
    held = [d for d in cache.held_dirs() if d not in held]
    cache.proc.popen.kill()
    cache.proc.wait()
    assert len(held) == 1 and os.path.isdir(os.path.join(VM_ROOT, held[0]))  # a killed server cannot clean up
    off = cache.factory("status")
    assert off.returncode == 1 and off.stderr.startswith(f"no VM cache server on {cache.endpoint}"), off
    assert off.stderr.rstrip().endswith("start one with `kata-runtime factory init`"), off
    destroyed = cache.factory("destroy")
    assert destroyed.returncode == 0, destroyed
    assert f"stopped sandbox {held[0]}, left by a VM cache server that was killed" in destroyed.stdout
    assert_guest_gone(held[0])
    again = cache.factory("destroy")
    assert again.returncode == 0 and again.stdout.strip() == f"no VM cache server on {cache.endpoint}: nothing to destroy"


def test_factory_commands_need_the_cache_enabled(tmp_path):
    config = write_config(tmp_path / "c.toml")
    for sub in ("init", "status", "destroy"):
        p = subprocess.run([*command("kata-runtime"), "--root", str(tmp_path / "r"), "--kata-config", str(config),
                            "factory", sub], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr.strip() == f"VM cache is not enabled: set [factory] vm_cache_number > 0 in {config}"


@pytest.mark.sandbox
def test_a_sandbox_handed_out_and_never_taken_over_is_stopped_when_its_lease_ends(tmp_path, cache):
    cache.start("--lease", "5")
    cache.ready()
    orphan = cache.get_base_vm()  # a taker that dies (or times out) before it records the sandbox
    assert os.path.exists(orphan[vmcache.RECORD_KEY])  # leased, not forgotten
    wait_for(lambda: not os.path.lexists(os.path.join(VM_ROOT, orphan["id"])), 30, "the lease to end")
    assert_guest_gone(orphan["id"])
    assert not os.path.exists(orphan[vmcache.RECORD_KEY])
    with pytest.raises(vmcache.CacheError, match="took sandbox .* back"):
        vmcache.taken_over(orphan)  # a taker this late is told, and fails its create
    cache.ready()  # and refilled

    orphan = cache.get_base_vm()
    cache.proc.popen.kill()  # the server dies during the lease
    cache.proc.wait()
    destroyed = cache.factory("destroy")  # waits for the lease, then stops it
    assert destroyed.returncode == 0, destroyed
    assert not os.path.lexists(os.path.join(VM_ROOT, orphan["id"]))


def test_a_lease_is_settled_once_by_whichever_side_comes_first(tmp_path, monkeypatch):
    stopped = []
    monkeypatch.setattr(vmcache, "stop_base_sandbox", lambda data, root, log: stopped.append(data["id"]))
    root = str(tmp_path)
    os.makedirs(vmcache.records_dir(root))

    def leased(sandbox_id: str) -> dict:
        path = vmcache.record_path(root, sandbox_id)
        open(path, "w").write("{}")
        return {"id": sandbox_id, vmcache.RECORD_KEY: path}

    taken, open_, ended, late = (leased(vmcache.ID_PREFIX + n * 16) for n in "abcd")
    vmcache.taken_over(taken)
    log = type("Log", (), {"warning": lambda self, msg: None})()
    left = vmcache.settle_leases(root, [(taken, 100.0), (open_, 200.0), (ended, 50.0), (late, 50.0)], log, now=100.0)
    assert left == [(open_, 200.0)] and stopped == [ended["id"], late["id"]]
    with pytest.raises(vmcache.CacheError, match="took sandbox .* back"):
        vmcache.taken_over(late)
    with pytest.raises(vmcache.CacheError, match="no record of its own"):
        vmcache.taken_over({"id": open_["id"], vmcache.RECORD_KEY: "/etc/passwd"})


@pytest.mark.sandbox
def test_a_second_server_on_the_endpoint_is_refused_even_before_the_first_listens(tmp_path, cache):
    """Two `factory init` started together (the first not listening yet): exactly one serves."""
    cache.start()
    out = tmp_path / "second.out"
    with open(out, "wb") as f:
        second = Proc(subprocess.Popen([*cache.argv, "factory", "init"], stdout=f, stderr=subprocess.STDOUT),
                      "second factory init")
    try:
        wait_for(lambda: not cache.proc.alive() or not second.alive(), 60, "one of the two servers to give up")
        loser, output = (second, out) if not second.alive() else (cache.proc, cache.out)
        assert loser.wait(5) == 1
        assert f"a VM cache server already serves {cache.endpoint}" in output.read_text()
        winner = cache.proc if loser is second else second
        assert winner.alive()
        cache.proc = winner
        cache.ready()
    finally:
        second.stop(timeout=30)


@pytest.mark.sandbox
def test_a_taken_sandbox_leaves_the_servers_cgroup_for_the_runtimes(tmp_path, cache):
    """Without a cgroupsPath, a sandbox of its own is born in the runtime's cgroup; a taken one
    must be moved there, out of the cache server's (whose stop or limits must not reach it)."""
    import kata_cgroups

    ours = kata_cgroups.cgroup_paths(os.getpid())
    controller = "cpu" if "cpu" in ours else next(iter(ours))
    server_cgroup = os.path.join(ours[controller], f"vmcache-test-{os.urandom(4).hex()}")
    os.mkdir(server_cgroup)
    try:
        cache.start(prefix=["sh", "-c", f'echo $$ > {server_cgroup}/cgroup.procs && exec "$@"', "sh"])
        cache.ready()
        kata = kata_with_cache(tmp_path, cache)
        bundle = make_bundle(tmp_path / "bundle", ["sleep", "1000"])
        assert kata.create("c-cgroup", bundle).returncode == 0, kata.log_tail()
        record = sandbox_record(kata, "c-cgroup")
        unshare, proxy = record["hypervisor"]["process"]["pid"], record["proxy"]["process"]["pid"]
        agent = int(open(f"/proc/{unshare}/task/{unshare}/children").read().split()[0])
        for pid in (unshare, agent, proxy):
            assert kata_cgroups.cgroup_paths(pid)[controller] == ours[controller], pid
        kata.ok("delete", "--force", "c-cgroup")
        assert_clean(kata, "c-cgroup")
        cache.proc.stop(timeout=30)
    finally:
        wait_for(lambda: not open(os.path.join(server_cgroup, "cgroup.procs")).read().strip(), 30,
                 "the test cgroup to empty")
        os.rmdir(server_cgroup)


def test_the_endpoint_lock_holds_when_a_stopping_server_removes_its_file(tmp_path, monkeypatch):
    """B opens the lock file just before the old server A removes it and unlocks: B's flock on
    the removed file succeeds, so B must lock the file the path names now; then C is refused."""
    import fcntl
    import types

    endpoint = str(tmp_path / "cache.sock")
    server = lambda: types.SimpleNamespace(endpoint=endpoint)  # noqa: E731 - what _lock_endpoint reads
    held_by_a = vmcache.CacheServer._lock_endpoint(server())
    real_flock = fcntl.flock

    def a_stops_between_open_and_flock(fd, op):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        os.unlink(endpoint + ".lock")  # CacheServer.run's way out: remove, then close
        os.close(held_by_a)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", a_stops_between_open_and_flock)
    held_by_b = vmcache.CacheServer._lock_endpoint(server())
    try:
        assert os.fstat(held_by_b).st_ino == os.stat(endpoint + ".lock").st_ino
        with pytest.raises(vmcache.CacheError, match="already serves"):
            vmcache.CacheServer._lock_endpoint(server())
        assert vmcache.locked(endpoint)
    finally:
        os.close(held_by_b)
    assert not vmcache.locked(endpoint)
