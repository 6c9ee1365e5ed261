"""A pod's network namespace connected to its sandbox (Kata 1.x's ``tcfilter`` internetworking model).

A container engine (containerd's CRI plugin, with a CNI plugin) makes the pod's network namespace
and puts a veth in it with the pod's address, routes and MAC; the OCI spec names the namespace
(``linux.namespaces`` entry ``{"type": "network", "path": ...}``). The runtime then:

1. :func:`plan` (at ``create``, before anything is made): the namespace's path (it must exist),
   the model (``[runtime] internetworking_model``: ``tcfilter`` or ``none``) and the DNS lines
   (the host file the spec bind-mounts on /etc/resolv.conf). Recorded in sandbox.json under
   ``"network"``; no namespace path means no network step at all.
2. :meth:`PodNetwork.attach` (before the guest starts): scans the namespace with pyroute2 for
   endpoints (veth/macvlan/ipvlan links, skipping ``lo``: name, MAC, MTU, addresses, main-table
   routes, permanent neighbours), and for a VM, per endpoint, Kata's tcfilter plumbing INSIDE the
   namespace: a tap ``tap<N>_kata`` (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, the endpoint's MTU, up), an
   ingress qdisc (``ffff:``) on the tap and on the veth, and on each a u32 match-all filter with
   ``mirred egress redirect`` to the other (Kata 1.x virtcontainers/network.go setupTCFiltering:
   ``tc filter add dev SRC parent ffff: protocol all u32 match u8 0 0 action mirred egress
   redirect dev DST``). The tap's fd is opened in the namespace and kept open for the hypervisor:
   QEMU gets ``-netdev tap,fd=N`` and ``-device virtio-net-pci`` with the VETH's MAC, so the pod
   network (the CNI bridge) sees the MAC it expects. The tap is not persistent (unlike Kata's): it
   lives exactly as long as a process holds its fd, so a crashed runtime leaves no tap behind.
3. :meth:`PodNetwork.configure_guest` (once the agent answers, before CreateSandbox, as Kata's
   kata_agent.go startSandbox): UpdateInterface per endpoint (found by MAC in the guest),
   UpdateRoutes with every endpoint's routes, AddARPNeighbors with the static (NUD_PERMANENT)
   neighbours. IPv6 link-local addresses and routes are left to the guest kernel.
4. :func:`detach` (at ``delete``, after the hypervisor stopped, from the sandbox.json record):
   removes the ingress qdiscs (their filters go with them) and any tap left. The veth is left
   as CNI made it. A namespace already deleted is not an error.

The process sandbox (hypervisor = "process", no VM) joins the pod's namespace directly: the
agent sees the veth itself, so there is nothing to tap (a tap there would have no reader and
would swallow the veth's traffic). Its runtime path is steps 1, 2 (the scan), 3 (the agent
re-applies the veth's own configuration, found by MAC) and 4; the tcfilter datapath itself is
tested by frames read and written on the tap fd (tests/network).

Every failure is a :class:`NetworkError` (a KataError) with a one-line message naming the
namespace or link; whatever the failed step made is undone first.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import contextmanager

from kata_runtime.errors import InvalidArgument, KataError

MODELS = ("tcfilter", "none")
DEFAULT_MODEL = "tcfilter"
#: Link kinds taken as endpoints (what CNI plugins put in a pod); others are logged and skipped.
ENDPOINT_KINDS = ("veth", "macvlan", "ipvlan")
TAP_NAME = "tap{}_kata"
NETDEV_ID = "network-{}"
RESOLV_CONF = "/etc/resolv.conf"
MAX_RESOLV_CONF = 64 << 10

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
ETH_P_ALL = 0x0003
INGRESS_HANDLE = 0xFFFF0000
#: u32 classid (flowid ffff:1): pyroute2 wants one; the mirred action decides the packet's fate.
FILTER_FLOWID = 0xFFFF0001
NUD_PERMANENT = 0x80
IFF_NOARP = 0x80
RT_TABLE_MAIN = 254
AF_INET6 = 10


class NetworkError(KataError):
    """The pod network cannot be connected or disconnected; the message says which link and why."""


# ------------------------------------------------------------------ the plan (from the spec)


def netns_path(spec: dict) -> str | None:
    """The spec's network namespace path (``linux.namespaces[type=network].path``), or None."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network" and ns.get("path"):
            return ns["path"]
    return None


def dns_lines(spec: dict) -> list[str]:
    """The lines of the host file the spec bind-mounts on /etc/resolv.conf ([] when none).
    InvalidArgument when that file cannot be read."""
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict) or os.path.normpath(m.get("destination") or "/") != RESOLV_CONF:
            continue
        source = m.get("source") or ""
        if m.get("type") not in ("bind", "none", None, "") or not source.startswith("/"):
            continue
        try:
            with open(source, "rb") as f:
                text = f.read(MAX_RESOLV_CONF).decode("utf-8", "replace")
        except OSError as e:
            raise InvalidArgument(f"the spec mounts {source} on {RESOLV_CONF}: {e.strerror}") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return []


def plan(spec: dict, model: str) -> dict | None:
    """sandbox.json's ``"network"`` record for a spec, or None when it names no network namespace
    (nor a resolv.conf). InvalidArgument for a missing namespace or an unknown model."""
    if model not in MODELS:
        raise InvalidArgument(f"internetworking_model {model!r} is unknown (known: {', '.join(MODELS)})")
    path = netns_path(spec)
    dns = dns_lines(spec)
    if path is None and not dns:
        return None
    if path is not None:
        _check_netns(path)
    return {"netns": path, "model": model, "dns": dns, "endpoints": []}


def _check_netns(path: str) -> None:
    """InvalidArgument unless ``path`` is a network namespace (an nsfs file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"network namespace {path}: {e.strerror}") from None
    try:
        ns_type = fcntl.ioctl(fd, 0xB703)  # NS_GET_NSTYPE
    except OSError:
        ns_type = -1
    finally:
        os.close(fd)
    if ns_type != CLONE_NEWNET:
        raise InvalidArgument(f"network namespace {path}: not a network namespace")


# ------------------------------------------------------------------ namespace access


_LIBC = None


def _setns(fd: int) -> None:
    import ctypes

    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(path: str):
    """Run the block with THIS THREAD in the network namespace ``path`` (setns(2)); sockets and
    taps made in the block belong to that namespace. NetworkError if it cannot be entered."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetworkError(f"network namespace {path}: {e.strerror}") from None
        try:
            _setns(target)
        except OSError as e:
            raise NetworkError(f"cannot enter network namespace {path}: {e.strerror}") from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@contextmanager
def netlink(path: str):
    """A pyroute2 IPRoute whose socket lives in namespace ``path`` (imports pyroute2)."""
    from pyroute2 import IPRoute

    with in_netns(path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def open_tap(name: str) -> int:
    """Create a non-persistent tap ``name`` in the CURRENT thread's namespace; returns its fd.

    IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: frames with a virtio-net header, as QEMU's tap backend
    uses them. The tap disappears when the last fd is closed. OSError if the kernel refuses."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------ endpoints


def _log():
    """This module's logger; logging is imported only when something is logged (not on a
    create without a pod network: it is ~6 ms before the agent's spawn)."""
    import logging

    return logging.getLogger("kata_runtime.network")


class Endpoint:
    """One pod interface as found in the namespace (JSON-able: recorded in sandbox.json).

    ``mtu`` in bytes; ``index``: its ifindex in the namespace; ``raw_flags``: its IFF_NOARP bit;
    ``addresses``: ["10.0.0.2/24", ...]; ``routes``: [{"dest": "10.0.0.0/24" or "", "gateway",
    "source", "scope"}]; ``neighbors``: [{"ip", "lladdr", "state", "flags"}]; ``tap``: the
    tcfilter tap's name ("" when none). A plain class, not a dataclass: dataclasses (with inspect)
    would cost every create ~5 ms before the agent's spawn."""

    FIELDS = ("name", "mac", "mtu", "kind", "index", "raw_flags", "addresses", "routes", "neighbors", "tap")

    def __init__(self, name: str, mac: str, mtu: int, kind: str, index: int, raw_flags: int = 0,
                 addresses: list[str] | None = None, routes: list[dict] | None = None,
                 neighbors: list[dict] | None = None, tap: str = ""):
        self.name, self.mac, self.mtu, self.kind, self.index = name, mac, mtu, kind, index
        self.raw_flags = raw_flags
        self.addresses = list(addresses or [])
        self.routes = list(routes or [])
        self.neighbors = list(neighbors or [])
        self.tap = tap

    @classmethod
    def from_record(cls, record: dict) -> "Endpoint":
        """The endpoint :meth:`record` wrote. TypeError for an unknown key."""
        return cls(**record)

    def record(self) -> dict:
        """Its sandbox.json record: every field, lists copied (as dataclasses.asdict did)."""
        return {name: _copied(getattr(self, name)) for name in self.FIELDS}

    def __eq__(self, other) -> bool:
        return isinstance(other, Endpoint) and self.record() == other.record()

    def __repr__(self) -> str:
        return f"Endpoint({', '.join(f'{n}={getattr(self, n)!r}' for n in self.FIELDS)})"


def _copied(value):
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


def _guest_address(text: str) -> bool:
    """True for addresses the guest needs from us (not IPv6 link-local: the kernel makes it)."""
    import ipaddress

    return not ipaddress.ip_interface(text).ip.is_link_local


def _scan_routes(ipr, index: int) -> list[dict]:
    import ipaddress

    routes = []
    for r in ipr.get_routes(table=RT_TABLE_MAIN, oif=index):
        if r.get("table") != RT_TABLE_MAIN or r.get("oif") != index:
            continue
        dest = f"{r.get('dst')}/{r['dst_len']}" if r.get("dst") else ""
        if dest and (ipaddress.ip_network(dest, strict=False).is_link_local or
                     ipaddress.ip_network(dest, strict=False).is_multicast):
            continue
        routes.append({"dest": dest, "gateway": r.get("gateway") or "", "source": r.get("prefsrc") or "",
                       "scope": r["scope"]})
    return routes


def _scan_neighbors(ipr, index: int) -> list[dict]:
    return [{"ip": n.get("dst"), "lladdr": n.get("lladdr") or "", "state": n["state"], "flags": n["flags"]}
            for n in ipr.get_neighbours(ifindex=index) if n["state"] & NUD_PERMANENT and n.get("dst")]


def _scan_link(ipr, link) -> Endpoint:
    index = link["index"]
    addresses = [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)]
    return Endpoint(name=link.get("ifname"), mac=link.get("address") or "", mtu=link.get("mtu") or 1500,
                    kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "", index=index,
                    raw_flags=link["flags"] & IFF_NOARP,
                    addresses=[a for a in addresses if _guest_address(a)],
                    routes=_scan_routes(ipr, index), neighbors=_scan_neighbors(ipr, index))


def scan(ipr) -> list[Endpoint]:
    """The endpoints of the namespace ``ipr`` is in: links of ENDPOINT_KINDS, by index."""
    found = []
    for link in sorted(ipr.get_links(), key=lambda l: l["index"]):
        kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
        if link.get("ifname") == "lo":
            continue
        if kind not in ENDPOINT_KINDS:
            _log().info("pod network: link %s (kind %r) is not an endpoint; skipped", link.get("ifname"), kind)
            continue
        found.append(_scan_link(ipr, link))
    return found


# ------------------------------------------------------------------ tcfilter


def _link_index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _add_redirect(ipr, source: int, dest: int) -> None:
    """Ingress of ``source``: every frame is redirected to the egress of ``dest`` (Kata's
    addRedirectTCFilter: u32 match-all, mirred egress redirect, stolen)."""
    ipr.tc("add-filter", "u32", index=source, parent=INGRESS_HANDLE, protocol=ETH_P_ALL, keys=["0x0/0x0+0"],
           target=FILTER_FLOWID, action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                         "ifindex": dest})


def _del_ingress(ipr, index: int) -> None:
    """Remove ``index``'s ingress qdisc (and so its filters); nothing when there is none."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("del", "ingress", index=index, handle=INGRESS_HANDLE)
    except NetlinkError as e:
        if e.code not in (2, 22):  # ENOENT / EINVAL: no ingress qdisc there
            raise


def tap_endpoint(path: str, ipr, ep: Endpoint, n: int) -> int:
    """Kata's setupTCFiltering for one endpoint, in namespace ``path``; returns the tap's fd.
    On failure nothing of it is left (the tap goes with its fd) and NetworkError is raised."""
    ep.tap = TAP_NAME.format(n)
    if _link_index(ipr, ep.tap) is not None:
        raise NetworkError(f"network namespace {path}: {ep.tap} already exists (another sandbox uses this pod "
                           "network)")
    try:
        with in_netns(path):
            fd = open_tap(ep.tap)
    except OSError as e:
        raise NetworkError(f"network namespace {path}: cannot create {ep.tap}: {e.strerror}") from None
    try:
        tap = _link_index(ipr, ep.tap)
        ipr.link("set", index=tap, mtu=ep.mtu, state="up")
        for index in (tap, ep.index):
            ipr.tc("add", "ingress", index=index, handle=INGRESS_HANDLE)
        _add_redirect(ipr, ep.index, tap)
        _add_redirect(ipr, tap, ep.index)
    except Exception as e:
        _del_ingress(ipr, ep.index)
        os.close(fd)
        raise NetworkError(f"network namespace {path}: tc redirect {ep.name} <-> {ep.tap}: {_reason(e)}") from None
    _log().info("pod network %s: %s (%s) <-> %s", path, ep.name, ep.mac, ep.tap)
    return fd


def _reason(e: Exception) -> str:
    args = getattr(e, "args", ())
    return str(args[1]) if len(args) > 1 else (str(e) or type(e).__name__)


# ------------------------------------------------------------------ the sandbox's view


class PodNetwork:
    """The ``"network"`` record of a sandbox plus, while a runtime process connects it, the tap fds."""

    def __init__(self, record: dict):
        self.record = record
        #: [(fd, mac, netdev id)] for the hypervisor (open only in the process that attached).
        self.nics: list[tuple[int, str, str]] = []

    @property
    def path(self) -> str | None:
        return self.record.get("netns")

    @property
    def model(self) -> str:
        return self.record.get("model") or DEFAULT_MODEL

    @property
    def endpoints(self) -> list[Endpoint]:
        return [Endpoint.from_record(e) for e in self.record.get("endpoints") or []]

    @property
    def dns(self) -> list[str]:
        return list(self.record.get("dns") or [])

    def attach(self, *, taps: bool) -> None:
        """Scan the namespace; with ``taps`` (a VM, model tcfilter) connect each endpoint.

        The record's endpoints are saved as they are made (a later ``detach`` undoes them).
        NetworkError on failure, after undoing this call's work."""
        if self.path is None:
            return
        with netlink(self.path) as ipr:
            endpoints = scan(ipr)
            if not endpoints:
                _log().warning("pod network %s: no endpoint (veth) in it; the guest gets no network", self.path)
            self.record["endpoints"] = [e.record() for e in endpoints]
            if not (taps and self.model == "tcfilter"):
                return
            try:
                for n, ep in enumerate(endpoints):
                    fd = tap_endpoint(self.path, ipr, ep, n)
                    self.nics.append((fd, ep.mac, NETDEV_ID.format(n)))
                    self.record["endpoints"][n] = ep.record()
            except BaseException:
                self.close_fds()
                _untap(ipr, endpoints)
                raise

    def close_fds(self) -> None:
        """Close this process's tap fds (once the hypervisor holds its own copies)."""
        for fd, _, _ in self.nics:
            try:
                os.close(fd)
            except OSError:
                pass
        self.nics = []

    def configure_guest(self, agent) -> None:
        """UpdateInterface per endpoint, UpdateRoutes, AddARPNeighbors (``agent``: a
        kata_runtime.agent.Agent). NetworkError naming the call and the agent's reason."""
        from kata_runtime.agent import AgentError

        endpoints = self.endpoints if self.model == "tcfilter" else []
        try:
            for ep in endpoints:
                agent.call("UpdateInterface", agent.pb.UpdateInterfaceRequest(interface=interface_pb(ep)))
            routes = [r for ep in endpoints for r in routes_pb(ep)]
            if routes:
                agent.call("UpdateRoutes", agent.pb.UpdateRoutesRequest(routes=agent.pb.Routes(Routes=routes)))
            neighbors = [n for ep in endpoints for n in neighbors_pb(ep)]
            if neighbors:
                agent.call("AddARPNeighbors", agent.pb.AddARPNeighborsRequest(
                    neighbors=agent.pb.ARPNeighbors(ARPNeighbors=neighbors)))
        except AgentError as e:
            raise NetworkError(f"configuring the guest's network: {e}") from None


def _untap(ipr, endpoints: list[Endpoint]) -> None:
    """Remove the tcfilter plumbing of ``endpoints`` (ingress qdiscs on veth and tap, the taps)."""
    for ep in endpoints:
        if not ep.tap:
            continue
        index = _link_index(ipr, ep.name)
        if index is not None:
            _del_ingress(ipr, index)
        tap = _link_index(ipr, ep.tap)
        if tap is not None:
            _del_ingress(ipr, tap)
            ipr.link("del", index=tap)


def detach(record: dict | None) -> None:
    """Undo ``attach`` from a sandbox.json record: idempotent; a namespace already gone is fine.
    NetworkError if netlink refuses."""
    if not record or not record.get("netns"):
        return
    path = record["netns"]
    endpoints = [Endpoint.from_record(e) for e in record.get("endpoints") or []]
    if not any(ep.tap for ep in endpoints) or not os.path.exists(path):
        return
    try:
        with netlink(path) as ipr:
            _untap(ipr, endpoints)
    except NetworkError:
        if os.path.exists(path):
            raise
    except Exception as e:  # noqa: BLE001 - NetlinkError
        raise NetworkError(f"network namespace {path}: removing the tc redirects: {_reason(e)}") from None


# ------------------------------------------------------------------ protobuf (types.proto)


def interface_pb(ep: Endpoint):
    """types.Interface for UpdateInterface: name, MAC (how the agent finds it), MTU, addresses."""
    import ipaddress

    from katapb import types_pb2

    addrs = []
    for text in ep.addresses:
        iface = ipaddress.ip_interface(text)
        addrs.append(types_pb2.IPAddress(family=types_pb2.v6 if iface.version == 6 else types_pb2.v4,
                                         address=str(iface.ip), mask=str(iface.network.prefixlen)))
    return types_pb2.Interface(device=ep.name, name=ep.name, IPAddresses=addrs, mtu=ep.mtu, hwAddr=ep.mac,
                               type=ep.kind, raw_flags=ep.raw_flags)


def routes_pb(ep: Endpoint) -> list:
    from katapb import types_pb2

    return [types_pb2.Route(dest=r["dest"], gateway=r["gateway"], device=ep.name, source=r["source"],
                            scope=r["scope"]) for r in ep.routes]


def neighbors_pb(ep: Endpoint) -> list:
    import ipaddress

    from katapb import types_pb2

    out = []
    for n in ep.neighbors:
        ip = ipaddress.ip_address(n["ip"])
        out.append(types_pb2.ARPNeighbor(
            toIPAddress=types_pb2.IPAddress(family=types_pb2.v6 if ip.version == 6 else types_pb2.v4,
                                            address=str(ip)),
            device=ep.name, lladdr=n["lladdr"], state=n["state"], flags=n["flags"]))
    return out


__all__ = ["DEFAULT_MODEL", "Endpoint", "MODELS", "NetworkError", "PodNetwork", "detach", "dns_lines",
           "in_netns", "netns_path", "open_tap", "plan", "scan"]
