"""The VM tier through containerd: ``ctr run`` with kata-runtime's ``hypervisor = "qemu"`` (TCG
here), the shim given a two-line wrapper that adds ``--kata-config`` (as a user registers a
flavour; containerd's runc binary takes no arguments of ours).

Boots are few (CI: 2 cores, 30 minutes for the whole suite): one ``ctr run`` that checks the
guest's ``uname -r``, stdin and its EOF, stderr and the exit code; one running task for ``ctr
task exec``, ``ctr task metrics`` (the VM's host cost in the cgroup ``/<ns>/<id>``) and ``ctr
task kill`` (KILL to an exec, TERM to the init); four VMs started at once, all output checked,
one of them writing exactly 1 MiB + 1 bytes just before it exits. After each, nothing may be
left: no QEMU, kata-proxy, kata-shim, mount, state or cgroup.

Needs a guest image: the session build of tests/conftest.py (set
KATA_PY_TEST_IMAGE_CACHE to reuse one between sessions).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cri.harness import kata_wrapper
from tests.reaper.test_reaper_run import PATTERN, expected
from tests.support.attach import Attached
from tests.support.containerd import (CGROUP_ROOT, _cmdline, kata_runtime_missing, new_id, pids_mentioning,
                                     run_with_stdin)
from tests.support.guest import missing_requirements
from tests.support.runtime import write_config

pytestmark = pytest.mark.vm

#: A TCG boot on a loaded 2-core machine, four at once included.
BOOT_TIMEOUT = 300.0
SIZE = (1 << 20) + 1


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


def test_vm_run_output_stdin_and_exit_code(ctr, image, kata_qemu, guest_image):
    """``ctr run --rm`` in a VM: the guest's kernel (not the host's), stdin relayed with its EOF
    (sha256sum returns), stderr, exit code 3. (Piped stdin needs ctr's own stdio: a --log-uri
    task has none, so the exact size at exit is checked in test_four_vms_at_once.)"""
    cid = new_id("vmrun")
    data = os.urandom(200_000)
    script = "uname -r; sha256sum; echo to-err >&2; exit 3"
    rc, out, err = run_with_stdin(ctr, image, cid, ["sh", "-c", script], data, timeout=BOOT_TIMEOUT, runtime=kata_qemu)
    assert rc == 3, err[-2000:]
    assert guest_image.kernel_version != os.uname().release
    assert out == f"{guest_image.kernel_version}\n{hashlib.sha256(data).hexdigest()}  -\n".encode()
    assert err == b"to-err\n"
    assert ctr.wait_clean([cid], timeout=30) == {}


def _events_stats(kata_qemu: str, ctr, cid: str) -> dict:
    """``kata-runtime events --stats``: the agent's statistics of the container (the guest's view)."""
    res = subprocess.run([kata_qemu, "--root", f"{ctr.runtime_root}/{ctr.namespace}", "events", "--stats", cid],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["data"]


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


def test_vm_task_exec_metrics_and_kill(ctr, image, kata_qemu, guest_image):
    """One running VM task: ``ctr task exec`` (output, stderr, exit code), ``ctr task metrics``
    (the VM's host cost), ``ctr task kill`` KILL to an exec (137) and TERM to the init, which
    traps it (its exit code 7 is ctr run's)."""
    cid = new_id("vmtask")
    cmd = ["sh", "-c", 'trap "exit 7" TERM; echo ready; while :; do sleep 0.1; done']
    init = Attached.spawn(ctr.run_argv(image, cid, cmd, runtime=kata_qemu), stdin=False)
    try:
        init.wait_output(b"ready", BOOT_TIMEOUT)
        res = subprocess.run(ctr.exec_argv(cid, "e1", ["sh", "-c", "uname -r; echo exec-err >&2; exit 5"]),
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        assert (res.returncode, res.stdout, res.stderr) == (5, f"{guest_image.kernel_version}\n".encode(),
                                                            b"exec-err\n")
        _check_metrics(ctr, kata_qemu, cid)
        sleeper = Attached.spawn(ctr.exec_argv(cid, "e2", ["sh", "-c", "echo ready; sleep 1000"]), stdin=False)
        try:
            sleeper.wait_output(b"ready", 120)
            ctr.ctr("task", "kill", "--exec-id", "e2", "-s", "SIGKILL", cid, timeout=60)
            assert sleeper.wait(60) == 137, bytes(sleeper.err)
        finally:
            sleeper.kill()
        ctr.ctr("task", "kill", "-s", "SIGTERM", cid, timeout=60)
        assert init.wait(120) == 7, bytes(init.err)
    finally:
        init.kill()
    assert ctr.wait_clean([cid], timeout=30) == {}


def test_four_vms_at_once(ctr, image, kata_qemu, guest_image, figures):
    """Four ``ctr run --rm`` in four VMs started at once under TCG on 2 cores: every output (the
    guest's kernel, stdout, stderr) and exit code right, the first one's stdout exactly 1 MiB + 1
    bytes more, written just before it exits (read by the harness's --log-uri logging binary:
    Containerd.run_logged says why); nothing left after."""
    cids = [new_id(f"vm4-{i}") for i in range(4)]
    payload = [f"yes {PATTERN[:-1].decode()} | head -c {SIZE}"] + [f"echo out-{i}" for i in range(1, 4)]

    def one(i: int):
        script = f"uname -r; echo err-{i} >&2; {payload[i]}; exit {i + 1}"
        return ctr.run_logged(image, cids[i], ["sh", "-c", script], timeout=2 * BOOT_TIMEOUT, runtime=kata_qemu)

    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    wall = time.monotonic() - t0
    head = f"{guest_image.kernel_version}\n".encode()
    for i, (res, out, err) in enumerate(results):
        assert (res.returncode, err, out[:len(head)]) == (i + 1, f"err-{i}\n".encode(), head), res.stderr[-2000:]
        want = expected(SIZE) if i == 0 else f"out-{i}\n".encode()
        assert len(out) - len(head) == len(want) and out[len(head):] == want, (i, len(out))
    assert ctr.wait_clean(cids, timeout=60) == {}
    figures.append(f"containerd: 4 ctr run --rm in 4 TCG VMs at once: {wall:.1f} s wall")
    print(f"\n4 ctr run --rm in 4 TCG VMs at once: {wall:.1f} s wall")
