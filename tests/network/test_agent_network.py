"""kata-agent's network calls on a real netlink: kata_agent.network run inside a namespace the
test made (``ip netns exec``: setns in a child process), and the same calls through the agent's
gRPC service (python -m kata_agent.standalone started inside that namespace), with the Kata 1.x
wire types (types.Interface, types.Route, types.ARPNeighbor) and status codes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from tests.network.conftest import NEIGHBOR_IP, REPO, netns_python
from tests.support.processes import python_prints

SCRIPT = """
import json
from kata_agent import network as n
out = {}
def err(fn, *a):
    try:
        fn(*a)
    except n.NetworkError as e:
        return [e.code, e.message]
    return None
"""


def run_in(ns: str, body: str) -> dict:
    """Run SCRIPT + body in namespace ``ns``; body fills ``out``; returns it."""
    p = netns_python(ns, SCRIPT + body + "\nprint(json.dumps(out))")
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_update_interface_finds_the_link_by_mac_and_sets_name_mtu_addresses(pod_net):
    out = run_in(pod_net.pod, f"""
got = n.update_interface(n.Interface(name="kata0", hw_addr="{pod_net.mac.upper()}", mtu=1280,
    addresses=[n.IPAddress(0, "10.77.0.5", "16"), n.IPAddress(1, "fd00:77::5", "64")]))
out["got"] = [got.name, got.mtu, got.hw_addr, sorted(a.address + "/" + a.mask for a in got.addresses)]
out["listed"] = [[i.name, i.mtu, i.hw_addr, i.type, bool(i.raw_flags & 1)] for i in n.list_interfaces()]
""")
    assert out["got"][:3] == ["kata0", 1280, pod_net.mac]
    assert {"10.77.0.5/16", "fd00:77::5/64"} <= set(out["got"][3])
    assert f"{pod_net.pod_ip}/{pod_net.prefix}" not in out["got"][3]  # replaced, not added to
    assert ["kata0", 1280, pod_net.mac, "veth", True] in out["listed"]
    assert "inet 10.77.0.5/16" in pod_net.in_pod("addr", "show", "dev", "kata0")
    assert "state UP" in pod_net.in_pod("link", "show", "dev", "kata0") or \
        "UP" in pod_net.in_pod("link", "show", "dev", "kata0")


def test_bad_interface_input_changes_nothing(pod_net):
    out = run_in(pod_net.pod, f"""
out["no_mac"] = err(n.update_interface, n.Interface(name="x"))
out["bad_mac"] = err(n.update_interface, n.Interface(hw_addr="02:zz:00:00:00:01"))
out["unknown_mac"] = err(n.update_interface, n.Interface(hw_addr="02:00:00:00:00:99"))
out["bad_ip"] = err(n.update_interface, n.Interface(hw_addr="{pod_net.mac}", addresses=[n.IPAddress(0, "10.1.2", "24")]))
out["bad_mask"] = err(n.update_interface, n.Interface(hw_addr="{pod_net.mac}", addresses=[n.IPAddress(0, "10.1.2.3", "33")]))
out["family"] = err(n.update_interface, n.Interface(hw_addr="{pod_net.mac}", addresses=[n.IPAddress(0, "fd00::1", "64")]))
out["name"] = err(n.update_interface, n.Interface(hw_addr="{pod_net.mac}", name="a-name-far-too-long"))
""")
    assert out["no_mac"][0] == "INVALID_ARGUMENT" and "hwAddr is empty" in out["no_mac"][1]
    assert out["bad_mac"][0] == "INVALID_ARGUMENT"
    assert out["unknown_mac"] == ["NOT_FOUND", "no link with hardware address 02:00:00:00:00:99 in the guest"]
    assert out["bad_ip"][0] == "INVALID_ARGUMENT" and "'10.1.2'" in out["bad_ip"][1]
    assert out["bad_mask"][0] == "INVALID_ARGUMENT" and "prefix length" in out["bad_mask"][1]
    assert out["family"][0] == "INVALID_ARGUMENT" and "IPv6" in out["family"][1]
    assert out["name"][0] == "INVALID_ARGUMENT"
    assert pod_net.leftovers() == []  # address, MAC, up: untouched


def test_update_routes_replaces_the_table_but_keeps_kernel_and_lo_routes(pod_net):
    out = run_in(pod_net.pod, f"""
out["set"] = len(n.update_routes([
    n.Route(dest="", gateway="{pod_net.peer_ip}", device="eth0"),            # default via the peer
    n.Route(dest="10.88.0.0/16", gateway="{pod_net.peer_ip}", device="eth0"),
    n.Route(dest="10.99.1.0/24", device="eth0", scope=253),                 # on-link
]))
out["routes"] = [[r.dest, r.gateway, r.device, r.scope] for r in n.list_routes()]
out["unreachable"] = err(n.update_routes, [n.Route(dest="10.5.0.0/16", gateway="10.200.0.1", device="eth0")])
out["after_failure"] = [[r.dest, r.gateway] for r in n.list_routes()]
out["bad_dest"] = err(n.update_routes, [n.Route(dest="10.5.0.0/99", device="eth0")])
out["no_dev"] = err(n.update_routes, [n.Route(dest="10.5.0.0/16", device="nope0")])
out["kept"] = [[r.dest, r.gateway] for r in n.list_routes()]
""")
    assert out["set"] == 3
    routes = out["routes"]
    assert ["", pod_net.peer_ip, "eth0", 0] in routes
    assert ["10.88.0.0/16", pod_net.peer_ip, "eth0", 0] in routes
    assert ["10.99.1.0/24", "", "eth0", 253] in routes
    assert ["10.213.7.0/24", "", "eth0", 253] in routes  # the kernel's subnet route stays
    assert out["unreachable"][0] == "INTERNAL" and "10.200.0.1" in out["unreachable"][1]
    assert out["bad_dest"][0] == "INVALID_ARGUMENT" and out["no_dev"][0] == "NOT_FOUND"
    assert out["kept"] == out["after_failure"]  # refused before anything was deleted
    assert ["", pod_net.peer_ip] not in out["after_failure"]  # declarative: the failed update deleted it


def test_add_arp_neighbors_installs_permanent_entries(pod_net):
    out = run_in(pod_net.pod, """
n.add_arp_neighbors([n.Neighbor(n.IPAddress(0, "10.213.7.20", ""), "eth0", "02:AA:00:00:00:20"),
                     n.Neighbor(n.IPAddress(0, "10.213.7.21", ""), "eth0", "02:aa:00:00:00:21", 0x80)])
n.add_arp_neighbors([n.Neighbor(n.IPAddress(0, "10.213.7.20", ""), "eth0", "02:aa:00:00:00:22")])  # replaces
out["no_dev"] = err(n.add_arp_neighbors, [n.Neighbor(n.IPAddress(0, "10.213.7.30", ""), "nope0", "02:aa:00:00:00:30")])
out["no_ip"] = err(n.add_arp_neighbors, [n.Neighbor(n.IPAddress(), "eth0", "02:aa:00:00:00:30")])
""")
    neigh = pod_net.in_pod("neigh", "show", "dev", "eth0")
    assert "10.213.7.20 lladdr 02:aa:00:00:00:22 PERMANENT" in neigh
    assert "10.213.7.21 lladdr 02:aa:00:00:00:21 PERMANENT" in neigh
    assert f"{NEIGHBOR_IP} lladdr" in neigh
    assert out["no_dev"][0] == "NOT_FOUND" and out["no_ip"][0] == "INVALID_ARGUMENT"
    assert "10.213.7.30" not in neigh


def test_pyroute2_is_not_imported_until_a_network_call():
    code = ("import sys, kata_agent.network, kata_agent.service; "
            "print('pyroute2' in sys.modules)")
    assert python_prints(code) == "False"


# --------------------------------------------------------------- through gRPC


class NetnsAgent:
    """kata_agent.standalone serving on a unix socket, running inside a test namespace."""

    def __init__(self, ns: str):
        self.dir = Path(tempfile.mkdtemp(prefix="kpynet-"))
        self.socket = str(self.dir / "agent.sock")
        self.log = open(self.dir / "agent.log", "wb")
        (self.dir / "shared").mkdir()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "kata_agent.standalone", "--socket", self.socket,
             "--state-dir", str(self.dir / "state"), "--shared-mount", str(self.dir / "shared"),
             "--log-level", "info"], cwd=str(REPO), stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", (self.dir / "agent.log").read_text()
        from katapb import agent_pb2, agent_pb2_grpc

        self.pb = agent_pb2
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


@pytest.fixture
def netns_agent(pod_net):
    agent = NetnsAgent(pod_net.pod)
    try:
        yield agent
    finally:
        agent.stop()


def test_the_grpc_calls_configure_the_namespace_they_run_in(pod_net, netns_agent):
    from katapb import types_pb2

    pb, stub = netns_agent.pb, netns_agent.stub
    iface = types_pb2.Interface(name="eth0", hwAddr=pod_net.mac, mtu=1300, IPAddresses=[
        types_pb2.IPAddress(family=types_pb2.v4, address="10.66.0.4", mask="24")])
    t0 = time.monotonic()
    got = stub.UpdateInterface(pb.UpdateInterfaceRequest(interface=iface), timeout=30)
    first_call = time.monotonic() - t0
    assert (got.name, got.mtu, got.hwAddr) == ("eth0", 1300, pod_net.mac)
    assert [(a.address, a.mask, a.family) for a in got.IPAddresses
            if not a.address.startswith("fe80:")] == [("10.66.0.4", "24", types_pb2.v4)]
    listed = stub.ListInterfaces(pb.ListInterfacesRequest(), timeout=30).Interfaces
    assert {i.name for i in listed} == {"lo", "eth0"}

    routes = pb.Routes(Routes=[types_pb2.Route(dest="", gateway="10.66.0.1", device="eth0"),
                               types_pb2.Route(dest="10.67.0.0/16", gateway="10.66.0.1", device="eth0")])
    assert len(stub.UpdateRoutes(pb.UpdateRoutesRequest(routes=routes), timeout=30).Routes) == 2
    now = [(r.dest, r.gateway, r.device) for r in stub.ListRoutes(pb.ListRoutesRequest(), timeout=30).Routes]
    assert ("", "10.66.0.1", "eth0") in now and ("10.67.0.0/16", "10.66.0.1", "eth0") in now
    assert "default via 10.66.0.1 dev eth0" in pod_net.in_pod("route")

    neigh = types_pb2.ARPNeighbor(toIPAddress=types_pb2.IPAddress(address="10.66.0.50"), device="eth0",
                                  lladdr="02:66:00:00:00:50", state=0x80)
    stub.AddARPNeighbors(pb.AddARPNeighborsRequest(neighbors=pb.ARPNeighbors(ARPNeighbors=[neigh])), timeout=30)
    assert "10.66.0.50 lladdr 02:66:00:00:00:50 PERMANENT" in pod_net.in_pod("neigh", "show", "dev", "eth0")
    print(f"first network call (imports pyroute2): {first_call * 1000:.0f} ms")


@pytest.mark.parametrize("case,code,text", [
    ("unknown_mac", grpc.StatusCode.NOT_FOUND, "no link with hardware address 02:00:00:00:00:77"),
    ("no_interface", grpc.StatusCode.INVALID_ARGUMENT, "UpdateInterfaceRequest.interface is missing"),
    ("bad_address", grpc.StatusCode.INVALID_ARGUMENT, "is not an IPv4 or IPv6 address"),
    ("no_routes", grpc.StatusCode.INVALID_ARGUMENT, "UpdateRoutesRequest.routes is missing"),
    ("route_device", grpc.StatusCode.NOT_FOUND, "no link named 'eth9'"),
])
def test_grpc_errors_have_the_status_and_a_one_line_message(pod_net, netns_agent, case, code, text):
    from katapb import types_pb2

    pb, stub = netns_agent.pb, netns_agent.stub
    calls = {
        "unknown_mac": lambda: stub.UpdateInterface(pb.UpdateInterfaceRequest(
            interface=types_pb2.Interface(hwAddr="02:00:00:00:00:77")), timeout=30),
        "no_interface": lambda: stub.UpdateInterface(pb.UpdateInterfaceRequest(), timeout=30),
        "bad_address": lambda: stub.UpdateInterface(pb.UpdateInterfaceRequest(interface=types_pb2.Interface(
            hwAddr=pod_net.mac, IPAddresses=[types_pb2.IPAddress(address="300.1.1.1", mask="24")])), timeout=30),
        "no_routes": lambda: stub.UpdateRoutes(pb.UpdateRoutesRequest(), timeout=30),
        "route_device": lambda: stub.UpdateRoutes(pb.UpdateRoutesRequest(routes=pb.Routes(
            Routes=[types_pb2.Route(dest="10.1.0.0/16", device="eth9")])), timeout=30),
    }
    with pytest.raises(grpc.RpcError) as info:
        calls[case]()
    assert info.value.code() == code
    assert text in info.value.details() and "\n" not in info.value.details()
    assert pod_net.leftovers() == []
