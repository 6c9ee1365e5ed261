"""What the kubelet does with one pod, step by step, through the CRI client (tests/cri/client.py)
against a :class:`tests.cri.harness.CriContainerd`; each step checks what it must.

    pod = run_pod(cd, "kata")                 # RunPodSandbox + PodSandboxStatus: READY, an IP
    cid = run_echo_container(cd, pod)         # CreateContainer + StartContainer + ContainerStatus
    check_exec_sync(cd, pod, cid)             # ExecSync: the pod's IP, hostname, DNS; exit codes
    check_host_reaches_pod(cd, pod)           # bytes echoed from the host namespace, exact
    check_logs(cd, pod, cid)                  # the CRI log file has the container's lines
    stop_and_remove(cd, pod, cid)             # StopContainer ... RemovePodSandbox

The container is busybox running :data:`ECHO_SCRIPT`: it prints one line on stdout and one on
stderr, then serves TCP :data:`ECHO_PORT` with ``nc -ll -e cat`` (every connection echoed back).
Every wait is bounded and fails with what was last seen.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass

from tests.cri.harness import GATEWAY, SUBNET, CriContainerd
from tests.cri.images import BUSYBOX_IMAGE

ECHO_PORT = 8080
OUT_LINE, ERR_LINE = "kata-py says hello on stdout", "kata-py says hello on stderr"
ECHO_SCRIPT = f"echo '{OUT_LINE}'; echo '{ERR_LINE}' >&2; exec nc -ll -p {ECHO_PORT} -e cat"
LOG_NAME = "echo/0.log"  # relative to the pod's log directory, as the kubelet names it


@dataclass
class Pod:
    id: str
    config: object  # the PodSandboxConfig it was run with
    handler: str
    ip: str
    netns: str  # the pod's network namespace file (under the CRI state dir)
    netns_inode: int  # that namespace's inode: net:[inode] in /proc/*/ns/net, fds and mountinfo


def wait_for(what: str, probe, timeout: float, interval: float = 0.1):
    """Call ``probe()`` until it returns something truthy (returned); AssertionError naming
    ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s (last: {value!r})")
        time.sleep(interval)


# ---------------------------------------------------------------- pod sandbox

def run_pod(cd: CriContainerd, handler: str, name: str = "web", timeout: float = 120.0) -> Pod:
    """RunPodSandbox with ``handler``; checks PodSandboxStatus: READY, the handler, an address of
    :data:`SUBNET` leased by host-local (not the bridge's), the network namespace mounted."""
    pb = cd.cri.pb
    config = cd.pod_config(name)
    pod_id = cd.cri.run_pod(config, handler, timeout=timeout)
    cd.track(pod_id)
    res = cd.cri.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                          timeout=60)
    status = res.status
    assert (status.state, status.runtime_handler, status.metadata.name) == (pb.SANDBOX_READY, handler, name)
    ip = status.network.ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET) and ip != GATEWAY, ip
    assert cd.ip_leases() == [ip], "host-local's leases should be exactly the pod's address"
    spec = json.loads(res.info["info"])["runtimeSpec"]  # the OCI spec the runtime was given
    [netns] = [ns["path"] for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]
    assert netns.startswith(str(cd.netns_dir) + "/") and os.path.exists(netns), netns
    return Pod(pod_id, config, handler, ip, netns, os.stat(netns).st_ino)


# ---------------------------------------------------------------- container

def container_config(cd: CriContainerd, name: str = "echo", script: str = ECHO_SCRIPT):
    pb = cd.cri.pb
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=BUSYBOX_IMAGE),
                              command=["sh", "-c", script], envs=[pb.KeyValue(key="GREETING", value="hi")],
                              log_path=LOG_NAME)


def run_echo_container(cd: CriContainerd, pod: Pod, timeout: float = 120.0) -> str:
    """CreateContainer + StartContainer of the echo container in ``pod``; checks ContainerStatus
    (RUNNING, started, its log path) and returns the container id."""
    pb = cd.cri.pb
    os.makedirs(os.path.join(pod.config.log_directory, os.path.dirname(LOG_NAME)), exist_ok=True)
    cid = cd.cri.create_container(pod.id, container_config(cd), pod.config, timeout=timeout)
    cd.track(cid)
    assert cd.cri.container_status(cid).state == pb.CONTAINER_CREATED
    cd.cri.start_container(cid, timeout=timeout)
    status = cd.cri.container_status(cid)
    assert (status.state, status.metadata.name) == (pb.CONTAINER_RUNNING, "echo"), status
    assert status.started_at >= status.created_at > 0
    assert status.log_path == os.path.join(pod.config.log_directory, LOG_NAME)
    return cid


def check_exec_sync(cd: CriContainerd, pod: Pod, cid: str) -> None:
    """ExecSync in the container: it has the pod's address on eth0, the pod's hostname, the
    pod's DNS config and the container's env; a failing command's exit code and stderr arrive."""
    script = "ip -o -4 addr show dev eth0; hostname; cat /etc/resolv.conf; echo GREETING=$GREETING"
    res = cd.cri.exec_sync(cid, ["sh", "-c", script], timeout=60)
    out = res.stdout.decode()
    assert (res.exit_code, res.stderr) == (0, b""), (res.exit_code, res.stderr)
    assert re.search(rf"inet {re.escape(pod.ip)}/24\b", out), out
    assert "\nweb\n" in out and "nameserver 10.213.64.53" in out and "search pod.example" in out, out
    assert "GREETING=hi" in out, out
    res = cd.cri.exec_sync(cid, ["sh", "-c", "echo to-stderr >&2; exit 3"], timeout=60)
    assert (res.exit_code, res.stdout, res.stderr) == (3, b"", b"to-stderr\n")


def echo_from_host(cd: CriContainerd, ip: str, payload: bytes, timeout: float = 30.0) -> bytes:
    """Connect from the host namespace to ``ip``:ECHO_PORT, send ``payload``, close our write side
    and read until EOF: what came back (socket.timeout / OSError on failure)."""
    with cd.in_host_netns():
        sock = socket.create_connection((ip, ECHO_PORT), timeout=timeout)
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def check_host_reaches_pod(cd: CriContainerd, pod: Pod, size: int = 256 << 10, timeout: float = 60.0) -> float:
    """The host namespace (where the CNI bridge is) reaches the pod's server: ``size`` random
    bytes echoed back exactly. Retries until the server listens. Returns the echo's seconds."""
    payload = os.urandom(size)
    deadline = time.monotonic() + timeout
    while True:
        start = time.monotonic()
        try:
            got = echo_from_host(cd, pod.ip, payload)
            break
        except OSError as e:  # refused while nc is not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"host -> {pod.ip}:{ECHO_PORT}: {e}") from None
            time.sleep(0.2)
    assert len(got) == len(payload) and got == payload, f"echoed {len(got)} of {len(payload)} bytes"
    return time.monotonic() - start


def log_lines(path: str) -> list[tuple[str, str, str]]:
    """The CRI log file's lines as (stream, tag, text): ``<RFC3339Nano time> <stream> <P|F> <text>``."""
    try:
        with open(path, errors="replace") as f:
            return [tuple(line.rstrip("\n").split(" ", 3)[1:]) for line in f if line.count(" ") >= 3]
    except FileNotFoundError:
        return []


def check_logs(cd: CriContainerd, pod: Pod, cid: str, timeout: float = 30.0) -> None:
    """The container's stdout and stderr lines are in its CRI log file (kubectl logs reads it)."""
    path = cd.cri.container_status(cid).log_path
    want = {("stdout", "F", OUT_LINE), ("stderr", "F", ERR_LINE)}
    wait_for(f"both lines in {path}", lambda: want <= set(log_lines(path)) or log_lines(path), timeout)


# ---------------------------------------------------------------- removal

def netns_holders(inode: int) -> list[str]:
    """What keeps the network namespace ``inode`` alive: processes in it, open fds to it, nsfs
    mounts of it. [] means the kernel destroyed it, with every link (tap, veth) and qdisc in it."""
    target = f"net:[{inode}]"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == target:
                found.append(f"pid {pid} in it")
            found += [f"pid {pid} fd {fd}" for fd in os.listdir(f"/proc/{pid}/fd")
                      if _readlink(f"/proc/{pid}/fd/{fd}") == target]
        except OSError:
            continue  # gone, or a kernel thread
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if line.split()[3] == target]
    return found


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def kata_plumbing(netns: str) -> list[str]:
    """kata-runtime's tcfilter traces in a pod namespace: tap links and ingress qdiscs."""
    def run(*argv):
        res = subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=30)
        return json.loads(res.stdout or "[]") if res.returncode == 0 else []

    taps = [f"link {link['ifname']}" for link in run("ip", "-j", "-d", "link", "show")
            if link.get("linkinfo", {}).get("info_kind") == "tun"]
    qdiscs = [f"qdisc {q['kind']} on {q.get('dev')}" for q in run("tc", "-j", "qdisc", "show")
              if q.get("kind") in ("ingress", "clsact")]
    return taps + qdiscs


def stop_and_remove(cd: CriContainerd, pod: Pod, cid: str, timeout: float = 120.0) -> None:
    """StopContainer (SIGKILL: exit 137, EXITED), RemoveContainer, StopPodSandbox (NOTREADY),
    RemovePodSandbox; then nothing may be left (:meth:`CriContainerd.wait_clean`) and the pod's
    network namespace must be destroyed (no holder: so no tap, veth or tc filter survives in it;
    containerd 1.6 unmounts it at StopPodSandbox already)."""
    pb = cd.cri.pb
    cd.cri.stop_container(cid, grace=0, timeout=timeout)
    status = cd.cri.container_status(cid)
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 137), status
    cd.cri.remove_container(cid, timeout=timeout)
    cd.cri.stop_pod(pod.id, timeout=timeout)
    assert cd.cri.pod_status(pod.id).state == pb.SANDBOX_NOTREADY
    if os.path.exists(pod.netns):
        assert kata_plumbing(pod.netns) == [], "the stopped pod's namespace still has kata plumbing"
    cd.cri.remove_pod(pod.id, timeout=timeout)
    assert cd.cri.list_pods() == []
    assert cd.wait_clean([pod.id, cid], timeout=30) == {}
    assert netns_holders(pod.netns_inode) == []


# ---------------------------------------------------------------- kata-runtime's side

def sandbox_processes(pod: Pod, what: str) -> list[int]:
    """Host processes of the kata sandbox dir of ``pod`` whose command line has ``what``
    (``kata-proxy``, ``qemu-system``, ``kata_agent``), ``unshare`` wrappers excluded."""
    from tests.support.containerd import KATA_VM_ROOT, _cmdline, pids_mentioning

    return [p for p in pids_mentioning(f"{KATA_VM_ROOT}/{pod.id}/")
            if any(what in a for a in _cmdline(p)) and not _cmdline(p)[0].endswith("unshare")]


def check_one_sandbox(pod: Pod, cid: str) -> None:
    """kata-runtime ran the pod as ONE sandbox: the pause container's (its dir under /run/vc/vm,
    one kata-proxy), which the container joined (no sandbox dir of its own)."""
    from tests.support.containerd import KATA_VM_ROOT

    assert os.path.isdir(f"{KATA_VM_ROOT}/{pod.id}"), "no kata sandbox for the pod"
    assert not os.path.exists(f"{KATA_VM_ROOT}/{cid}"), "the container got a sandbox of its own"
    assert len(sandbox_processes(pod, "kata-proxy")) == 1


def check_vm(pod: Pod) -> None:
    """The pod runs in a QEMU guest: one qemu-system process for its sandbox, and the tcfilter
    plumbing (a tap, an ingress qdisc) in the pod's network namespace."""
    assert len(sandbox_processes(pod, "qemu-system")) == 1
    plumbing = kata_plumbing(pod.netns)
    assert any(p.startswith("link ") for p in plumbing) and any(p.startswith("qdisc ingress") for p in plumbing), \
        plumbing
