"""Network tier fixtures: network namespaces and veth pairs made by the test, as a CNI bridge
plugin would make a pod's, and nothing else.

* ``pod_net``: two namespaces of the test's own, ``<tag>-pod`` and ``<tag>-peer``, joined by a
  veth pair created inside them (the host's namespace never holds either end): ``eth0`` in the
  pod (address, MAC and MTU below, default route via the peer, one static neighbour) and
  ``veth0`` in the peer (the "host side" of the pod network: the bridge's address). Both
  namespaces are deleted at teardown; only namespaces a test made are ever deleted.
* ``netns_python(ns, code)``: run Python code inside a namespace (``ip netns exec``: setns in a
  child process) and return its stdout.

Tests touch only these namespaces and loopback: no traffic leaves them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.requirements import missing, skip_items

HERE = Path(__file__).parent

POD_IP = "10.213.7.2"
PEER_IP = "10.213.7.1"
PREFIX = 24
POD_MAC = "02:6b:70:00:07:02"
POD_MTU = 1400
NEIGHBOR_IP = "10.213.7.9"
NEIGHBOR_MAC = "02:6b:70:00:07:09"


def missing_requirements() -> str | None:
    return missing(root="network namespaces and veth pairs need root", tools=("ip",), tool_hint="iproute2",
                   modules=("pyroute2",))


def pytest_collection_modifyitems(config, items):
    skip_items(items, HERE, missing_requirements, when=lambda item: "unit" not in item.keywords)


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return stdout; AssertionError with stderr if it fails and ``check``."""
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def netns_python(ns: str, code: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` with this Python inside namespace ``ns``; returns the CompletedProcess."""
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, cwd=str(REPO))
    if check and p.returncode != 0:
        raise AssertionError(f"python in netns {ns} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


@dataclass
class PodNet:
    """A pod's namespace wired to a peer namespace, as CNI's bridge plugin leaves it."""

    pod: str
    peer: str
    pod_ip: str = POD_IP
    peer_ip: str = PEER_IP
    prefix: int = PREFIX
    mac: str = POD_MAC
    mtu: int = POD_MTU
    device: str = "eth0"

    @property
    def path(self) -> str:
        """The pod namespace's path, as an OCI spec names it."""
        return f"/run/netns/{self.pod}"

    def in_pod(self, *args: str, check: bool = True) -> str:
        return ip("-n", self.pod, *args, check=check)

    def in_peer(self, *args: str, check: bool = True) -> str:
        return ip("-n", self.peer, *args, check=check)

    def links(self, ns: str | None = None) -> list[dict]:
        return json.loads(ip("-j", "-n", ns or self.pod, "-d", "link", "show") or "[]")

    def leftovers(self) -> list[str]:
        """What a runtime may have left in the pod namespace: links other than lo/eth0, ingress
        qdiscs, tc filters; and the pod's eth0 must still have its address and MAC."""
        found = [f"link {link['ifname']}" for link in self.links() if link["ifname"] not in ("lo", self.device)]
        tc = subprocess.run(["tc", "-n", self.pod, "-j", "qdisc", "show"], capture_output=True, text=True)
        for q in json.loads(tc.stdout or "[]"):
            if q.get("kind") in ("ingress", "clsact"):
                found.append(f"qdisc {q['kind']} on {q.get('dev')}")
        filters = subprocess.run(["tc", "-n", self.pod, "filter", "show", "dev", self.device, "ingress"],
                                 capture_output=True, text=True)
        if filters.stdout.strip():
            found.append(f"tc filters on {self.device}: {filters.stdout.strip()[:200]}")
        eth0 = [link for link in self.links() if link["ifname"] == self.device]
        if not eth0 or eth0[0].get("address") != self.mac:
            found.append(f"{self.device} changed: {eth0}")
        if f"{self.pod_ip}/{self.prefix}" not in self.in_pod("-4", "-o", "addr", "show", "dev", self.device):
            found.append(f"{self.device} lost {self.pod_ip}/{self.prefix}")
        return found


def make_pod_net(tag: str) -> PodNet:
    """Create ``<tag>-pod`` and ``<tag>-peer`` joined by a veth (see the module docstring)."""
    net = PodNet(pod=f"{tag}-pod", peer=f"{tag}-peer")
    ip("netns", "add", net.pod)
    ip("netns", "add", net.peer)
    net.in_peer("link", "add", "veth0", "type", "veth", "peer", "name", net.device, "netns", net.pod)
    net.in_peer("addr", "add", f"{net.peer_ip}/{net.prefix}", "dev", "veth0")
    net.in_peer("link", "set", "veth0", "mtu", str(net.mtu), "up")
    net.in_peer("link", "set", "lo", "up")
    net.in_pod("link", "set", net.device, "address", net.mac, "mtu", str(net.mtu))
    net.in_pod("addr", "add", f"{net.pod_ip}/{net.prefix}", "dev", net.device)
    net.in_pod("link", "set", net.device, "up")
    net.in_pod("link", "set", "lo", "up")
    net.in_pod("route", "add", "default", "via", net.peer_ip, "dev", net.device)
    net.in_pod("neigh", "add", NEIGHBOR_IP, "lladdr", NEIGHBOR_MAC, "dev", net.device, "nud", "permanent")
    return net


def delete_pod_net(net: PodNet) -> None:
    for ns in (net.pod, net.peer):
        if netns_exists(ns):
            ip("netns", "delete", ns, check=False)


@pytest.fixture
def pod_net():
    net = make_pod_net(f"kpy{uuid.uuid4().hex[:6]}")
    try:
        yield net
    finally:
        delete_pod_net(net)
        assert not netns_exists(net.pod) and not netns_exists(net.peer)
