"""The runtime's pod network code without a VM.

* kata-runtime create/start (process sandbox) with a spec naming the test's pod namespace: the
  container sees the veth's address, MAC, MTU and routes (the agent joined the namespace and got
  UpdateInterface/UpdateRoutes/AddARPNeighbors from the runtime's scan), the spec's hostname and
  the bundle's resolv.conf; a server in it is reached from the peer namespace, bytes exact; after
  delete nothing is left in the namespace or on the host.
* The tcfilter plumbing the runtime makes for a VM (kata_runtime.network.PodNetwork.attach with
  taps): its tc shape, and frames through it both ways on the tap fd a hypervisor would get.
* Bad input: a missing namespace, an unknown model: one line, nothing left.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.network.conftest import NEIGHBOR_IP, NEIGHBOR_MAC, ip

from tests.support.oci import make_bundle
from tests.support.requirements import requires
from tests.support.runtime import Kata, assert_clean, write_config

VNET_HDR_LEN = 10
#: busybox nc -l prints what a client sends; its stdin is a fifo held open, since busybox's nc
#: quits at EOF on stdin (the container's is /dev/null). sh runs busybox applets by name.
NC_SERVER = "mkfifo /tmp/in && exec 3<>/tmp/in && nc -l -p 7000 </tmp/in"
RESOLV = "nameserver 10.213.7.53\nsearch pod.example\noptions ndots:5\n"


pytestmark = requires(tools=("unshare", "nsenter", "runc", "tc"))


def pod_bundle(path: Path, args, net, *, resolv: str | None = RESOLV, hostname: str = "pod-a") -> Path:
    """A busybox bundle whose spec names ``net``'s pod namespace (as the CRI plugin writes it)."""
    bundle = make_bundle(path, args, hostname=hostname)
    config = json.loads((bundle / "config.json").read_text())
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = net.path
    if resolv is not None:
        (path / "resolv.conf").write_text(resolv)
        config["mounts"].append({"destination": "/etc/resolv.conf", "type": "bind",
                                 "source": str(path / "resolv.conf"), "options": ["rbind", "ro"]})
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


@pytest.fixture
def kata(tmp_path):
    cli = Kata(tmp_path / "root", write_config(tmp_path / "configuration.toml"), tmp_path / "kata.log")
    yield cli
    cli.cleanup()
    for cid in cli.ids:
        assert_clean(cli, cid)


def new_id() -> str:
    return f"kn-{uuid.uuid4().hex[:12]}"


def run_to_exit(kata, cid: str, bundle: Path, out: Path, timeout: float = 60) -> str:
    p = kata.create(cid, bundle, out=out)
    assert p.returncode == 0, kata.explain(p, ["create"])
    kata.ok("start", cid)
    kata.wait_status(cid, "stopped", timeout=timeout)
    return out.read_text()


def test_a_container_sees_the_pod_veth_routes_hostname_and_dns(kata, pod_net, tmp_path):
    script = ("ip -o addr show dev eth0; ip -o link show dev eth0; ip route; ip neigh show dev eth0; "
              "hostname; cat /etc/resolv.conf")
    cid = new_id()
    out = run_to_exit(kata, cid, pod_bundle(tmp_path / "b", ["sh", "-c", script], pod_net), tmp_path / "out")
    assert f"inet {pod_net.pod_ip}/{pod_net.prefix}" in out
    assert f"link/ether {pod_net.mac}" in out and f"mtu {pod_net.mtu}" in out
    assert f"default via {pod_net.peer_ip} dev eth0" in out
    assert f"{NEIGHBOR_IP} lladdr {NEIGHBOR_MAC}" in out
    assert "pod-a\n" in out and RESOLV in out
    state = json.loads((kata.root / "sandboxes" / cid / "sandbox.json").read_text())
    [ep] = state["network"]["endpoints"]
    assert (ep["name"], ep["mac"], ep["mtu"], ep["tap"]) == ("eth0", pod_net.mac, pod_net.mtu, "")
    kata.ok("delete", cid)
    assert_clean(kata, cid)
    assert pod_net.leftovers() == []


def test_the_peer_reaches_a_server_in_the_container_bytes_exact(kata, pod_net, tmp_path):
    payload = os.urandom(48 << 10)
    (tmp_path / "payload").write_bytes(payload)
    cid = new_id()
    bundle = pod_bundle(tmp_path / "b", ["sh", "-c", NC_SERVER], pod_net)
    p = kata.create(cid, bundle, out=tmp_path / "out")
    assert p.returncode == 0, kata.explain(p, ["create"])
    kata.ok("start", cid)
    busybox = shutil.which("busybox")
    deadline = time.monotonic() + 20
    while True:  # until the server listens
        sent = subprocess.run(["ip", "netns", "exec", pod_net.peer, busybox, "nc", "-w", "5", pod_net.pod_ip, "7000"],
                              stdin=open(tmp_path / "payload", "rb"), capture_output=True, timeout=30)
        if sent.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sent.returncode == 0, sent.stderr
    kata.wait_status(cid, "stopped", timeout=30)
    kata.ok("delete", cid)  # the shim has relayed everything once it is gone
    got = (tmp_path / "out").read_bytes()
    assert (len(got), got) == (len(payload), payload)
    assert pod_net.leftovers() == []


def test_a_missing_namespace_is_refused_in_one_line_and_leaves_nothing(kata, pod_net, tmp_path):
    bundle = pod_bundle(tmp_path / "b", ["true"], pod_net)
    config = json.loads((bundle / "config.json").read_text())
    gone = f"/run/netns/kpy-missing-{uuid.uuid4().hex[:6]}"
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = gone
    (bundle / "config.json").write_text(json.dumps(config))
    cid = new_id()
    p = kata.create(cid, bundle)
    assert p.returncode == 1
    err = p.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and f"network namespace {gone}: No such file or directory" in err
    assert not os.path.exists(gone)
    assert_clean(kata, cid)
    assert pod_net.leftovers() == []


def test_a_file_that_is_no_namespace_is_refused(kata, pod_net, tmp_path):
    bundle = pod_bundle(tmp_path / "b", ["true"], pod_net)
    config = json.loads((bundle / "config.json").read_text())
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = str(bundle / "config.json")
    (bundle / "config.json").write_text(json.dumps(config))
    cid = new_id()
    p = kata.create(cid, bundle)
    assert p.returncode == 1 and b"not a network namespace" in p.stderr
    assert_clean(kata, cid)


def test_internetworking_model_is_validated(tmp_path):
    from kata_runtime.config import ConfigError, load

    path = tmp_path / "c.toml"
    path.write_text('[runtime]\ninternetworking_model = "macvtap"\n')
    with pytest.raises(ConfigError, match=r"\[runtime\] internetworking_model: must be one of tcfilter, none"):
        load(str(path))
    path.write_text('[runtime]\ninternetworking_model = "none"\n')
    assert load(str(path)).values["runtime"]["internetworking_model"] == "none"
    assert load(str(tmp_path / "absent.toml") if False else None).values["runtime"]["internetworking_model"] in (
        "tcfilter", "none")


# ------------------------------------------------------- tcfilter without a VM


def read_frame(fd: int, want, timeout: float = 5.0) -> bytes:
    """The first frame read from tap ``fd`` (virtio-net header stripped) for which want(frame)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            frame = os.read(fd, 65536)[VNET_HDR_LEN:]
            if want(frame):
                return frame
    raise AssertionError("no matching frame on the tap")


def arp_request(src_mac: str, src_ip: str, dst_ip: str) -> bytes:
    mac = bytes.fromhex(src_mac.replace(":", ""))
    ip4 = lambda a: bytes(int(x) for x in a.split("."))  # noqa: E731
    return (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip4(src_ip)
            + b"\x00" * 6 + ip4(dst_ip))


def test_tcfilter_redirects_the_veth_to_a_tap_and_back_and_detach_leaves_nothing(pod_net):
    from kata_runtime import network as knet

    spec = {"linux": {"namespaces": [{"type": "network", "path": pod_net.path}]}}
    record = knet.plan(spec, "tcfilter")
    net = knet.PodNetwork(record)
    net.attach(taps=True)
    try:
        [(fd, mac, netdev)] = net.nics
        assert (mac, netdev) == (pod_net.mac, "network-0")
        [ep] = record["endpoints"]
        assert ep["tap"] == "tap0_kata" and f"{pod_net.pod_ip}/{pod_net.prefix}" in ep["addresses"]
        assert {"ip": NEIGHBOR_IP, "lladdr": NEIGHBOR_MAC, "state": 0x80, "flags": 0} in ep["neighbors"]
        tap = json.loads(ip("-j", "-n", pod_net.pod, "link", "show", "tap0_kata"))[0]
        assert tap["mtu"] == pod_net.mtu and "UP" in tap["flags"]
        for src, dst in (("eth0", "tap0_kata"), ("tap0_kata", "eth0")):
            shown = subprocess.run(["tc", "-n", pod_net.pod, "filter", "show", "dev", src, "ingress"],
                                   capture_output=True, text=True, check=True).stdout
            assert "u32" in shown and "match 00000000/00000000 at 0" in shown
            assert f"mirred (Egress Redirect to device {dst}) stolen" in shown

        # peer -> veth -> (redirect) -> tap: the peer's ARP for the pod arrives on the tap fd
        subprocess.run(["ip", "netns", "exec", pod_net.peer, shutil.which("busybox"), "ping", "-c", "1", "-W", "1",
                        pod_net.pod_ip],
                       capture_output=True)
        seen = read_frame(fd, lambda f: f[12:14] == b"\x08\x06" and f[38:42] == bytes([10, 213, 7, 2]))
        assert seen[:6] == b"\xff" * 6  # broadcast who-has 10.213.7.2 from the peer
        # tap -> (redirect) -> veth -> peer: an ARP request written as the guest answers from the peer
        os.write(fd, b"\x00" * VNET_HDR_LEN + arp_request(pod_net.mac, pod_net.pod_ip, pod_net.peer_ip))
        reply = read_frame(fd, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02")
        assert reply[:6] == bytes.fromhex(pod_net.mac.replace(":", ""))
        assert reply[28:32] == bytes([10, 213, 7, 1])  # sender: the peer
    finally:
        net.close_fds()
        knet.detach(record)
    assert pod_net.leftovers() == []
    knet.detach(record)  # idempotent


def test_detach_after_the_namespace_is_gone_is_not_an_error(pod_net):
    from kata_runtime import network as knet

    record = knet.plan({"linux": {"namespaces": [{"type": "network", "path": pod_net.path}]}}, "tcfilter")
    net = knet.PodNetwork(record)
    net.attach(taps=True)
    net.close_fds()
    ip("netns", "delete", pod_net.pod)
    knet.detach(record)
