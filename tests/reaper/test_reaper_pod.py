"""A pod as containerd's CRI plugin makes one, driven with ``ctr run --annotation``: a sandbox
container (``io.kubernetes.cri.container-type=sandbox``), then a container naming it
(``container-type=container``, ``io.kubernetes.cri.sandbox-id=<sandbox id>``). With kata-runtime
both must share one sandbox: one agent (one VM), the container's processes inside it; deleting the
container leaves the sandbox running; deleting the sandbox leaves nothing. kata-runtime only: runc
has no sandboxes.
"""

from __future__ import annotations

import os
import subprocess

from tests.support.containerd import KATA_VM_ROOT, _cmdline, descendants, new_id, pids_mentioning
from tests.support.processes import runs_kata_agent, wait_for

CRI = "io.kubernetes.cri."


def _run_in_pod(ctr, image, runtime, cid: str, kind: str, sandbox_id: str, cmd: list[str]) -> None:
    extra = ("--annotation", f"{CRI}container-type={kind}", "--annotation", f"{CRI}sandbox-id={sandbox_id}")
    res = subprocess.run(ctr.run_argv(image, cid, cmd, rm=False, detach=True, extra=extra, **runtime.run_kwargs()),
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ctr.wait_task_status(cid, ("RUNNING",), timeout=30)


def _sandbox_procs(sandbox_id: str, what: str) -> list[int]:
    """Host processes of the sandbox dir of ``sandbox_id`` whose command line has ``what``
    (``kata-proxy``; ``kata_agent``: the process sandbox's agent, however it is run
    (runs_kata_agent), its ``unshare`` parent excluded)."""
    def matches(argv: list[str]) -> bool:
        return runs_kata_agent(" ".join(argv)) if what == "kata_agent" else any(what in a for a in argv)
    return [p for p in pids_mentioning(f"{KATA_VM_ROOT}/{sandbox_id}/")
            if matches(_cmdline(p)) and not _cmdline(p)[0].endswith("unshare")]


def _stop(ctr, cid: str) -> None:
    ctr.ctr("task", "kill", "-s", "SIGKILL", cid, timeout=30)
    ctr.wait_task_status(cid, ("STOPPED",), timeout=30)
    ctr.ctr("task", "delete", cid, check=False, timeout=60)
    ctr.ctr("container", "delete", cid, timeout=60)


def test_pod_shares_one_sandbox(ctr, image, kata):
    runtime = kata
    pod, member = new_id("pod"), new_id("member")
    _run_in_pod(ctr, image, runtime, pod, "sandbox", pod, ["sleep", "1000"])
    _run_in_pod(ctr, image, runtime, member, "container", pod, ["sh", "-c", "echo in-pod > /tmp/mark; sleep 1000"])

    assert not os.path.exists(f"{KATA_VM_ROOT}/{member}"), "the container got a sandbox of its own"
    proxies = _sandbox_procs(pod, "kata-proxy")
    assert len(proxies) == 1 and _sandbox_procs(member, "kata-proxy") == [], proxies
    agents = _sandbox_procs(pod, "kata_agent")  # process tier: the agent is a host process
    if agents:
        # The one agent runs both containers' processes. busybox `sh -c` execs its last command,
        # so the member's process becomes a `sleep 1000` too (once its sh got there): two of them.
        assert len(agents) == 1, agents
        wait_for(lambda: [_cmdline(p) for p in descendants(agents)].count(["sleep", "1000"]) == 2, timeout=30,
                 what=f"the pod's and the member's 'sleep 1000' under the agent {agents[0]}")
    res = subprocess.run(ctr.exec_argv(member, "e1", ["cat", "/tmp/mark"]), stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, b"in-pod\n"), res.stderr

    _stop(ctr, member)
    assert ctr.tasks().get(pod) == "RUNNING" and _sandbox_procs(pod, "kata-proxy") == proxies
    _stop(ctr, pod)
    assert ctr.wait_clean([pod, member]) == {}
