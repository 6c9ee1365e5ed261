"""The VM tier through containerd: ``ctr run`` with kata-runtime's ``hypervisor = "qemu"`` (TCG
here), the shim given a two-line wrapper that adds ``--kata-config`` (as a user registers a
flavour; containerd's runc binary takes no arguments of ours).

Boots are few (CI: 2 cores, 30 minutes for the whole suite), the checks those of the process tier
(test_reaper_run, _task, _faults) through the helpers of tests/support/containerd.py:

* one ``ctr run`` that checks the guest's ``uname -r``, stdin and its EOF, stderr, the exit code;
* one ``ctr run --tty`` (the pty's size, a typed line, a resize);
* one long-running task shared by the module (``vm_task``) for ``ctr task exec`` (with and
  without a tty; every exact output size of SIZES at the exec's exit, the same last-buffer path
  as an init's), ``ctr task metrics`` (the VM's host cost in the cgroup ``/<ns>/<id>``), ``ps``,
  ``pause``/``resume``, ``kill`` (TERM and KILL to execs, then TERM to the init: the module's
  last test);
* four VMs started at once, each writing an exact size at exit (16 MiB, 1 MiB +- 1, 64 KiB + 1 on
  stderr) read through ``ctr run``'s --log-uri;
* containerd killed, and a containerd-shim killed, mid-run (a daemon of their own).

After each, nothing may be left: no QEMU, kata-proxy, kata-shim, mount, state or cgroup.

Needs a guest image: the session build of tests/conftest.py (set
KATA_PY_TEST_IMAGE_CACHE to reuse one between sessions).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cri.harness import kata_wrapper
from tests.support.attach import Attached
from tests.support.containerd import (CGROUP_ROOT, SIZES, Containerd, _cmdline, descendants, exec_tty, expected,
                                      kata_runtime_missing, new_id, pause_resume, pids_mentioning, run_tty,
                                      run_with_stdin, wait_gone, write_size)
from tests.support.guest import missing_requirements
from tests.support.runtime import write_config

pytestmark = pytest.mark.vm

#: A TCG boot on a loaded 2-core machine, four at once included.
BOOT_TIMEOUT = 300.0
#: An exec moving 16 MiB out of a TCG guest while two more do the same.
EXEC_TIMEOUT = 300.0
#: The shared task's init: three processes (sh, two sleeps) until TERM, which it turns into exit 7.
SHARED_INIT = ["sh", "-c", 'trap "exit 7" TERM; sleep 1000 & sleep 1000 & echo ready; wait']
#: Exact stderr sizes go up to 1 MiB + 1 (as the process tier's), stdout's to 16 MiB + 1.
MAX_ERR_SIZE = (1 << 20) + 1


@pytest.fixture(scope="module")
def kata_qemu(tmp_path_factory, request) -> str:
    """The wrapper script the shim runs as runc: the venv's kata-runtime with a configuration of
    ``hypervisor = "qemu"`` booting the session's guest image under TCG. Skipped where no guest
    can be built or kata-runtime does not run."""
    reason = missing_requirements() or kata_runtime_missing()
    if reason:
        pytest.skip(reason)
    image = request.getfixturevalue("guest_image")
    base = tmp_path_factory.mktemp("kata-qemu")
    conf = write_config(base / "qemu.toml", **{
        "runtime": {"hypervisor": "qemu", "enable_debug": False},
        "hypervisor.qemu": {"kernel": str(image.kernel), "initrd": str(image.initrd), "image": str(image.image),
                            "accel": "tcg", "default_memory": 1024, "boot_timeout": BOOT_TIMEOUT},
        "proxy.kata": {"debug": False}, "shim.kata": {"debug": False}, "agent.kata": {"enable_debug": False}})
    return str(kata_wrapper(base / "kata-qemu.sh", conf))


def _qemu_of(cid: str) -> list[int]:
    """Live QEMU processes of the sandbox ``cid`` (they name its /run/vc/vm/<id>/ files)."""
    return [p for p in pids_mentioning(f"/run/vc/vm/{cid}/") if "qemu-system" in (_cmdline(p) or [""])[0]]


# ---------------------------------------------------------------- one VM per ctr run

def test_vm_run_output_stdin_and_exit_code(ctr, image, kata_qemu, guest_image):
    """``ctr run --rm`` in a VM: the guest's kernel (not the host's), stdin relayed with its EOF
    (sha256sum returns), stderr, exit code 3. (Piped stdin needs ctr's own stdio: a --log-uri
    task has none, so the exact sizes at exit are checked in test_four_vms_at_once.)"""
    cid = new_id("vmrun")
    data = os.urandom(200_000)
    script = "uname -r; sha256sum; echo to-err >&2; exit 3"
    rc, out, err = run_with_stdin(ctr, image, cid, ["sh", "-c", script], data, timeout=BOOT_TIMEOUT, runtime=kata_qemu)
    assert rc == 3, err[-2000:]
    assert guest_image.kernel_version != os.uname().release
    assert out == f"{guest_image.kernel_version}\n{hashlib.sha256(data).hexdigest()}  -\n".encode()
    assert err == b"to-err\n"
    assert ctr.wait_clean([cid], timeout=30) == {}


def test_vm_run_tty(ctr, image, kata_qemu):
    """``ctr run --tty`` in a VM, on a pty the test opened: the guest's shell sees that pty's size
    (33 x 101) on a /dev/pts terminal, reads a typed line, sees a later resize (40 x 120); ctr
    returns its exit code 7; nothing is left."""
    cid = new_id("vmtty")
    rc, screen = run_tty(ctr, image, cid, timeout=BOOT_TIMEOUT, runtime=kata_qemu)
    assert b"size:33 101\n" in screen, screen
    assert b"/dev/pts/" in screen, screen
    assert b"got:hello\n" in screen, screen
    assert b"resized:40 120\n" in screen, screen
    assert rc == 7, screen
    assert ctr.wait_clean([cid], timeout=30) == {}


# ---------------------------------------------------------------- one VM task for the module

@dataclass
class SharedTask:
    """A ``ctr run`` of SHARED_INIT in one VM, attached (its exit code is ctr's), left alone by
    the per-test clean-up (``containerd.kept``); booted on first use, and again if a test ended
    it (so any order of the tests works; in file order there is one boot)."""

    cd: Containerd
    image: str
    runtime: str
    cid: str = ""
    init: Attached | None = None

    def running(self) -> str:
        """The task's container id; boots it first when there is none running."""
        if self.init is None or self.init.popen.poll() is not None:
            self.cid = new_id("vmtask")
            self.cd.kept.add(self.cid)
            self.init = Attached.spawn(self.cd.run_argv(self.image, self.cid, SHARED_INIT, runtime=self.runtime),
                                       stdin=False)
            self.init.wait_output(b"ready", BOOT_TIMEOUT)
        return self.cid

    def end(self) -> None:
        """SIGKILL the task if it still runs, let ``ctr run --rm`` delete it (bounded)."""
        if self.init is not None and self.init.popen.poll() is None:
            self.cd.ctr("task", "kill", "-a", "-s", "SIGKILL", self.cid, check=False, timeout=60)
            try:
                self.init.wait(120)
            except TimeoutError:
                pass
        self.cd.kept.discard(self.cid)


@pytest.fixture(scope="module")
def vm_task(containerd, image, kata_qemu):
    task = SharedTask(containerd, image, kata_qemu)
    yield task
    task.end()


def _exec(ctr, cid: str, exec_id: str, script: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``ctr task exec`` of ``sh -c script`` to its end, stdin /dev/null, ctr's stdout/stderr as bytes."""
    return subprocess.run(ctr.exec_argv(cid, exec_id, ["sh", "-c", script]), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


def test_vm_exec(ctr, vm_task, guest_image):
    """``ctr task exec`` into a VM task: the output (the guest's kernel), stderr and exit code."""
    res = _exec(ctr, vm_task.running(), "e1", "uname -r; echo exec-err >&2; exit 5")
    assert (res.returncode, res.stdout, res.stderr) == (5, f"{guest_image.kernel_version}\n".encode(),
                                                        b"exec-err\n")


def test_vm_exec_tty(ctr, vm_task):
    """``ctr task exec --tty`` into a VM task, on a pty: the exec'd shell has a terminal of that
    size (30 x 90), reads a typed line; ctr returns its exit code 3."""
    rc, screen = exec_tty(ctr, vm_task.running(), "t1", timeout=120)
    assert b"size:30 90\n" in screen, screen
    assert b"got:typed\n" in screen, screen
    assert rc == 3, screen


def _err_size(size: int) -> int:
    """What the exec of ``size`` writes to stderr: as much, up to MAX_ERR_SIZE; else nothing."""
    return size if size <= MAX_ERR_SIZE else 0


def _exec_sizes(ctr, cid: str, size: int) -> tuple[int, subprocess.CompletedProcess]:
    """An exec writing ``size`` bytes to stdout and, at the same time, ``_err_size(size)`` to
    stderr, then exiting."""
    script = f"{write_size(_err_size(size), 'err')} & {write_size(size)}; wait"
    return size, _exec(ctr, cid, f"sz{size}", script, timeout=EXEC_TIMEOUT)


def test_vm_exec_exact_output_sizes(ctr, vm_task):
    """Every size of SIZES (around powers of two up to 16 MiB + 1) written by an exec just before
    it exits, on stdout and (up to 1 MiB + 1) on stderr at the same time: every byte reaches
    ``ctr task exec``, none extra (the class of bug where the last buffer at exit is lost; the
    exec's exit takes the same path out of the guest as an init's). Three execs at a time."""
    cid = vm_task.running()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda size: _exec_sizes(ctr, cid, size), SIZES))
    for size, res in results:
        err_size = _err_size(size)
        assert res.returncode == 0, (size, res.stderr[-500:])
        assert (len(res.stdout), len(res.stderr)) == (size, err_size), size
        assert res.stdout == expected(size), f"{size}: stdout differs"
        assert res.stderr == expected(err_size), f"{size}: stderr differs"


def test_vm_ps(ctr, vm_task):
    """``ctr task ps`` of a VM task: the guest's pids of the init's three processes; an exec's
    process joins them while it runs and is gone once it exited (its stdin closed)."""
    cid = vm_task.running()
    before = ctr.wait_task_pids(cid, 3)
    assert len(before) == 3, before
    reader = Attached.spawn(ctr.exec_argv(cid, "ps1", ["sh", "-c", "echo ready; exec cat"]))
    try:
        reader.wait_output(b"ready", 120)
        during = ctr.wait_task_pids(cid, 4)
        reader.close_stdin()
        assert reader.wait(60) == 0, bytes(reader.err)
    finally:
        reader.kill()
    assert len(during) == 4 and set(before) < set(during), (before, during)
    assert sorted(ctr.wait_task_pids(cid, 3)) == sorted(before)


def test_vm_pause_resume(ctr, vm_task):
    """``ctr task pause`` of a VM task: PAUSED, and an exec's output stops (the whole container is
    frozen, execs included); ``resume``: RUNNING, the output goes on. Then TERM to that exec
    (kata-shim forwards it to the guest): its ``ctr task exec`` returns 143, the init runs on."""
    cid = vm_task.running()
    counter = Attached.spawn(ctr.exec_argv(cid, "count", ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; "
                                                                     "sleep 0.05; done"]), stdin=False)
    try:
        counter.wait_output(b"\n3\n", 120)
        assert pause_resume(ctr, cid, counter.out) == ("PAUSED", False, "RUNNING", True)
        ctr.ctr("task", "kill", "--exec-id", "count", "-s", "SIGTERM", cid, timeout=60)
        assert counter.wait(60) == 143, bytes(counter.err)
    finally:
        counter.kill()
    assert ctr.tasks()[cid] == "RUNNING"


def _kill_command_line(command: str) -> str:
    """A guest shell script SIGKILLing every process whose command line is ``command`` exactly."""
    return (f"for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = '{command} ' ] "
            "&& kill -9 ${p#/proc/}; done; true")


def _kill_exec(ctr, cid: str, exec_id: str, seconds: int, *, ps_after: bool) -> tuple[int, list[int], list[int]]:
    """``ctr task kill --exec-id exec_id -s SIGKILL`` of a running exec ``sleep seconds``: (its
    ``ctr task exec``'s exit code, ``ctr task ps`` before the exec, with ``ps_after`` ``ctr task
    ps`` after, once back to that count or after 15 s, else []). A survivor in the guest is then
    killed (by an exec: the image's busybox has no pkill), so that later counts hold."""
    before = ctr.wait_task_pids(cid, 3)
    sleeper = Attached.spawn(ctr.exec_argv(cid, exec_id, ["sh", "-c", f"echo ready; exec sleep {seconds}"]),
                             stdin=False)
    try:
        sleeper.wait_output(b"ready", 120)
        assert len(ctr.wait_task_pids(cid, len(before) + 1)) == len(before) + 1
        ctr.ctr("task", "kill", "--exec-id", exec_id, "-s", "SIGKILL", cid, timeout=60)
        rc = sleeper.wait(60)
        after = ctr.wait_task_pids(cid, len(before)) if ps_after else []
    finally:
        sleeper.kill()
        _exec(ctr, cid, f"{exec_id}-clean", _kill_command_line(f"sleep {seconds}"))
    return rc, before, after


def test_vm_exec_kill_status(ctr, vm_task):
    """``ctr task kill --exec-id ID -s SIGKILL`` to an exec in a VM task: its ``ctr task exec``
    returns 137 (containerd-shim sends that KILL to the pid in the exec's --pid-file, the exec's
    kata-shim)."""
    rc, _before, _after = _kill_exec(ctr, vm_task.running(), "k1", 2001, ps_after=False)
    assert rc == 137


def test_vm_exec_killed_leaves_no_process(ctr, vm_task):
    """After ``ctr task kill --exec-id ID -s SIGKILL`` the exec's process is gone from the guest:
    ``ctr task ps`` is back to the init's three. The exec's kata-shim, which that KILL ends,
    cannot catch it: its sentinel (kata_shim.sentinel) kills the process in the guest."""
    _rc, before, after = _kill_exec(ctr, vm_task.running(), "k2", 2002, ps_after=True)
    assert sorted(after) == sorted(before), (before, after)


def _check_metrics(ctr, kata_qemu: str, cid: str) -> None:
    """``ctr task metrics`` of a VM sandbox: the cgroup ``/<ns>/<id>`` holding QEMU, so its CPU
    time (the TCG boot: seconds) and memory (the guest's RAM as touched) are the VM's host cost,
    more than the guest's own view of the container."""
    qemus = _qemu_of(cid)
    assert len(qemus) == 1, qemus
    assert f"memory:/{ctr.namespace}/{cid}\n" in Path(f"/proc/{qemus[0]}/cgroup").read_text()
    metrics = json.loads(ctr.ctr("task", "metrics", "--format", "json", cid, timeout=30).stdout)
    assert metrics["cpu"]["usage"]["total"] > 1e9, metrics["cpu"]
    assert metrics["memory"]["usage"]["usage"] > 64 << 20, metrics["memory"]["usage"]
    current = int(Path(CGROUP_ROOT, "pids", ctr.namespace, cid, "pids.current").read_text())
    assert current > 3 and abs(metrics["pids"]["current"] - current) <= 2, (metrics["pids"], current)
    guest = _events_stats(kata_qemu, ctr, cid)
    assert 0 < guest["memory"]["usage"]["usage"] < metrics["memory"]["usage"]["usage"]


def _events_stats(kata_qemu: str, ctr, cid: str) -> dict:
    """``kata-runtime events --stats``: the agent's statistics of the container (the guest's view)."""
    res = subprocess.run([kata_qemu, "--root", f"{ctr.runtime_root}/{ctr.namespace}", "events", "--stats", cid],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["data"]


def test_vm_metrics(ctr, vm_task, kata_qemu):
    """``ctr task metrics`` of a VM task: the VM's host cost (see _check_metrics)."""
    _check_metrics(ctr, kata_qemu, vm_task.running())


def test_vm_kill_term_ends_init(ctr, vm_task):
    """``ctr task kill`` TERM to the VM task's init, which traps it: its exit code 7 is ``ctr
    run``'s, and once ``--rm`` deleted it nothing is left (QEMU, kata-proxy, kata-shims, mounts,
    state, cgroups). Ends the module's shared task, so it runs last."""
    cid = vm_task.running()
    ctr.ctr("task", "kill", "-s", "SIGTERM", cid, timeout=60)
    assert vm_task.init.wait(120) == 7, bytes(vm_task.init.err)
    vm_task.end()
    assert ctr.wait_clean([cid], timeout=30) == {}


# ---------------------------------------------------------------- several VMs

#: test_four_vms_at_once: each VM's exact output at exit, (size, stream).
AT_EXIT = [(1 << 24, "out"), ((1 << 20) - 1, "out"), ((1 << 20) + 1, "out"), ((1 << 16) + 1, "err")]


def test_four_vms_at_once(ctr, image, kata_qemu, guest_image, figures):
    """Four ``ctr run --rm`` in four VMs started at once under TCG on 2 cores: every output (the
    guest's kernel first, a stderr line) and exit code right, and the exact sizes of AT_EXIT
    (16 MiB, 1 MiB - 1, 1 MiB + 1 on stdout, 64 KiB + 1 on stderr) written just before each exits:
    every byte, none extra (read by the harness's --log-uri logging binary: Containerd.run_logged
    says why); nothing left after."""
    cids = [new_id(f"vm4-{i}") for i in range(4)]

    def one(i: int):
        size, stream = AT_EXIT[i]
        script = f"uname -r; echo err-{i} >&2; {write_size(size, stream)}; exit {i + 1}"
        return ctr.run_logged(image, cids[i], ["sh", "-c", script], timeout=2 * BOOT_TIMEOUT, runtime=kata_qemu)

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    wall = time.monotonic() - t0
    head = f"{guest_image.kernel_version}\n".encode()
    for i, (res, out, err) in enumerate(results):
        size, stream = AT_EXIT[i]
        want_out, want_err = head, f"err-{i}\n".encode()
        if stream == "out":
            want_out += expected(size)
        else:
            want_err += expected(size)
        assert res.returncode == i + 1, res.stderr[-2000:]
        assert (len(out), len(err)) == (len(want_out), len(want_err)), (i, size, stream)
        assert (out, err) == (want_out, want_err), (i, size, stream)
    assert ctr.wait_clean(cids, timeout=60) == {}
    figures.append(f"containerd: 4 ctr run --rm in 4 TCG VMs at once (16 MiB out of one): {wall:.1f} s wall")
    print(f"\n4 ctr run --rm in 4 TCG VMs at once: {wall:.1f} s wall")


# ---------------------------------------------------------------- faults

def _vm_processes(cid: str) -> list[str]:
    """Host processes of the sandbox ``cid`` still alive: any naming its /run/vc/vm/<id>/ (QEMU,
    kata-proxy) or the id itself (kata-shim, kata-runtime), shown as "pid argv"."""
    pids = set(pids_mentioning(f"/run/vc/vm/{cid}/")) | set(pids_mentioning(cid))
    return [f"{p} {' '.join(_cmdline(p))[:200]}" for p in sorted(pids)]


def test_vm_containerd_killed_mid_run(own_containerd, kata_qemu):
    """SIGKILL to containerd while a VM task runs: the shim (and QEMU) keep the task; a new
    containerd finds it RUNNING; kill + delete then leave no QEMU, kata-proxy, kata-shim, mount,
    state dir or cgroup."""
    cd, image = own_containerd
    cid = new_id("vmcdkill")
    cd.run_detached(image, cid, ["sleep", "1000"], timeout=BOOT_TIMEOUT, runtime=kata_qemu)
    shim, qemus = cd.shim_of(cid), _qemu_of(cid)
    assert len(qemus) == 1, qemus
    cd.kill_daemon(signal.SIGKILL)
    assert wait_gone([shim] + qemus, 1.0) == [shim] + qemus, "the shim or QEMU died with containerd"
    cd.launch()
    assert cd.tasks().get(cid) == "RUNNING"
    cd.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=60)
    cd.wait_task_status(cid, ("STOPPED",), timeout=60)
    cd.delete(cid)
    assert wait_gone(qemus, 30.0) == []
    assert cd.wait_clean([cid], timeout=30) == {}
    assert _vm_processes(cid) == []


def test_vm_shim_killed_mid_run(own_containerd, kata_qemu):
    """SIGKILL to a VM task's containerd-shim: containerd cleans up after the dead shim (it runs
    ``kata-runtime delete --force``); once the task and container are deleted none of the shim's
    former descendants, no QEMU, kata-proxy, kata-shim, mount, state dir or cgroup is left."""
    cd, image = own_containerd
    cid = new_id("vmshimkill")
    cd.run_detached(image, cid, ["sleep", "1000"], timeout=BOOT_TIMEOUT, runtime=kata_qemu)
    shim, qemus = cd.shim_of(cid), _qemu_of(cid)
    assert len(qemus) == 1, qemus
    below = descendants([shim])
    assert below, "the shim has no children"
    os.kill(shim, signal.SIGKILL)
    assert wait_gone([shim], 10.0) == []
    cd.delete(cid)
    assert wait_gone(below + qemus, 60.0) == [], [f"{p} {' '.join(_cmdline(p))[:150]}" for p in below + qemus]
    # containerd 1.6 leaves a killed shim's socket file in /run/containerd/s (runc alike): not ours
    assert cd.wait_clean([cid], timeout=30, ignore=("shim_sockets",)) == {}
    assert _vm_processes(cid) == []
