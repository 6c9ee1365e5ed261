"""The guest's network, as the runtime describes it: interfaces, routes and static neighbours.

The five networking calls of AgentService (UpdateInterface, UpdateRoutes, ListInterfaces,
ListRoutes, AddARPNeighbors) are implemented here on the guest's rtnetlink with pyroute2 --
the maintained netlink library -- never by running or parsing ``ip``. kata_agent/service.py
turns the protobuf messages (proto/katapb/types.proto) into the dataclasses below and back;
nothing here imports grpc or protobuf.

Semantics follow the Kata 1.x agent (its network.go and grpc.go):

* UpdateInterface finds the link by its hardware address (``hwAddr``, the MAC QEMU's
  virtio-net got from the pod's veth), takes it down, replaces its addresses (IPv4, and IPv6
  other than link-local: the kernel makes that one from the MAC), sets its name, MTU and
  NOARP flag, and always puts it back up. Unlike Go, every address is parsed BEFORE the link
  is touched, so bad input changes nothing.
* UpdateRoutes is declarative: every route of the main table is deleted except those on
  ``lo`` and those the kernel installed (proto kernel: the subnet routes of the addresses),
  then the requested routes are added, those without a gateway first (a gateway must be
  reachable when its route is added). Every route is checked BEFORE anything is deleted.
* ListInterfaces / ListRoutes read the current state (routes: the main table, as Go's
  netlink.RouteList).
* AddARPNeighbors installs each neighbour (``state`` 0 means NUD_PERMANENT); an existing
  entry for the same address is replaced (Go added, failing on a duplicate).

Errors are :class:`NetworkError` with a gRPC status name: INVALID_ARGUMENT for bad input,
NOT_FOUND for a MAC or device name that names no link, INTERNAL for a netlink failure (with
the kernel's message). pyroute2 is imported at the first call, not when the agent starts (a
TCG guest pays seconds for every import on its start path). Calls are synchronous (pyroute2's
IPRoute runs its own event loop): the service runs them in a worker thread, one at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger("kata_agent.network")

IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
AF_INET = 2
AF_INET6 = 10
#: types.proto IPFamily values.
FAMILY_V4 = 0
FAMILY_V6 = 1

_LOCK = threading.Lock()


class NetworkError(Exception):
    """A network call failed. ``code``: gRPC status name; the message is one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ domain types


@dataclass
class IPAddress:
    """types.IPAddress: ``family`` FAMILY_V4/FAMILY_V6, ``address`` text, ``mask`` prefix length text."""

    family: int = FAMILY_V4
    address: str = ""
    mask: str = ""


@dataclass
class Interface:
    """types.Interface. ``hw_addr``: MAC "aa:bb:..."; ``mtu`` bytes (0 = keep); ``raw_flags``: IFF_*."""

    device: str = ""
    name: str = ""
    addresses: list[IPAddress] = field(default_factory=list)
    mtu: int = 0
    hw_addr: str = ""
    pci_addr: str = ""
    type: str = ""
    raw_flags: int = 0


@dataclass
class Route:
    """types.Route. ``dest``: "a.b.c.d/len", "" or "default" for a default route; ``scope``:
    netlink RT_SCOPE_* number; ``source``: preferred source address (RTA_PREFSRC)."""

    dest: str = ""
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = RT_SCOPE_UNIVERSE


@dataclass
class Neighbor:
    """types.ARPNeighbor. ``state``: NUD_* (0 = NUD_PERMANENT); ``flags``: NTF_*."""

    address: IPAddress = field(default_factory=IPAddress)
    device: str = ""
    lladdr: str = ""
    state: int = 0
    flags: int = 0


# ------------------------------------------------------------------ netlink access


def _iproute():
    """A fresh pyroute2 IPRoute on this (the guest's) network namespace; imports pyroute2."""
    from pyroute2 import IPRoute

    return IPRoute()


class _Netlink:
    """One IPRoute for the duration of a call, under the module lock (calls never interleave)."""

    def __enter__(self):
        _LOCK.acquire()
        try:
            self.ipr = _iproute()
        except BaseException:
            _LOCK.release()
            raise
        return self.ipr

    def __exit__(self, *exc) -> None:
        try:
            self.ipr.close()
        finally:
            _LOCK.release()


def _netlink_error(what: str, exc: Exception) -> NetworkError:
    """An INTERNAL NetworkError naming the operation and the kernel's reason."""
    reason = getattr(exc, "args", [None])
    text = f"{reason[1]}" if isinstance(reason, tuple) and len(reason) > 1 else str(exc)
    return NetworkError("INTERNAL", f"{what}: {text}")


def _do(what: str, fn, *args, **kwargs):
    """Run one netlink request; any failure becomes INTERNAL naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except NetworkError:
        raise
    except Exception as exc:  # noqa: BLE001 - NetlinkError, OSError
        raise _netlink_error(what, exc) from None


# ------------------------------------------------------------------ parsing


def normalise_mac(text: str) -> str:
    """"AA-BB-cc:dd:ee:ff" -> "aa:bb:cc:dd:ee:ff"; INVALID_ARGUMENT if it is not 6 hex bytes."""
    parts = text.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise NetworkError("INVALID_ARGUMENT", f"hardware address {text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return ":".join(parts)


def parse_address(addr: IPAddress) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An IPAddress -> ip_interface ("10.0.0.2/24"); INVALID_ARGUMENT naming the bad part."""
    try:
        ip = ipaddress.ip_address(addr.address.strip())
    except ValueError:
        raise NetworkError("INVALID_ARGUMENT", f"IP address {addr.address!r} is not an IPv4 or IPv6 address") from None
    want = FAMILY_V6 if ip.version == 6 else FAMILY_V4
    if addr.family != want:
        raise NetworkError("INVALID_ARGUMENT", f"IP address {addr.address} is IPv{ip.version} but its family says "
                                               f"{'v6' if addr.family == FAMILY_V6 else 'v4'}")
    mask = addr.mask.strip() or str(ip.max_prefixlen)
    if not mask.isdigit() or int(mask) > ip.max_prefixlen:
        raise NetworkError("INVALID_ARGUMENT", f"mask {addr.mask!r} of {addr.address} is not a prefix length "
                                               f"0..{ip.max_prefixlen}")
    return ipaddress.ip_interface(f"{ip}/{int(mask)}")


def _parse_ip(text: str, what: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise NetworkError("INVALID_ARGUMENT", f"{what} {text!r} is not an IP address") from None


def _parse_dest(text: str):
    """Route.dest -> ip_network, or None for a default route ("" / "default")."""
    text = text.strip()
    if text in ("", "default"):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NetworkError("INVALID_ARGUMENT", f"route destination {text!r} is not a network (a.b.c.d/len)") from None


# ------------------------------------------------------------------ reading


def _link_name(ipr, index: int) -> str:
    links = ipr.get_links(index)
    return links[0].get("ifname") if links else ""


def _link_kind(link) -> str:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""


def _addresses(ipr, index: int) -> list[IPAddress]:
    out = []
    for a in ipr.get_addr(index=index):
        family = FAMILY_V6 if a["family"] == AF_INET6 else FAMILY_V4
        out.append(IPAddress(family=family, address=a.get("address"), mask=str(a["prefixlen"])))
    return out


def _interface(ipr, link) -> Interface:
    return Interface(device=link.get("ifname"), name=link.get("ifname"), addresses=_addresses(ipr, link["index"]),
                     mtu=link.get("mtu") or 0, hw_addr=link.get("address") or "", type=_link_kind(link),
                     raw_flags=link["flags"])


def list_interfaces() -> list[Interface]:
    """Every link of the guest with its addresses (both families), MTU, MAC, kind and flags."""
    with _Netlink() as ipr:
        links = _do("listing links", ipr.get_links)
        return [_interface(ipr, link) for link in links]


def _route(ipr, r, names: dict[int, str]) -> Route:
    dst = r.get("dst")
    dest = f"{dst}/{r['dst_len']}" if dst else ""
    return Route(dest=dest, gateway=r.get("gateway") or "", device=names.get(r.get("oif"), ""),
                 source=r.get("prefsrc") or "", scope=r["scope"])


def _main_routes(ipr) -> list:
    routes = _do("listing routes", ipr.get_routes, table=RT_TABLE_MAIN)
    return [r for r in routes if r.get("table") == RT_TABLE_MAIN and r["family"] in (AF_INET, AF_INET6)]


def list_routes() -> list[Route]:
    """The routes of the main table (both families), as Go's netlink.RouteList gives them."""
    with _Netlink() as ipr:
        names = {link["index"]: link.get("ifname") for link in _do("listing links", ipr.get_links)}
        return [_route(ipr, r, names) for r in _main_routes(ipr)]


# ------------------------------------------------------------------ interfaces


def _link_by_mac(ipr, mac: str):
    for link in _do("listing links", ipr.get_links):
        if (link.get("address") or "").lower() == mac:
            return link
    raise NetworkError("NOT_FOUND", f"no link with hardware address {mac} in the guest")


def _link_by_name(ipr, name: str):
    if not name:
        raise NetworkError("INVALID_ARGUMENT", "the device name is empty")
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkError("NOT_FOUND", f"no link named {name!r} in the guest")
    return found[0]


def _replace_addresses(ipr, index: int, wanted: list) -> None:
    """Delete the link's IPv4 and global IPv6 addresses, then add ``wanted`` (ip_interface objects)."""
    for a in ipr.get_addr(index=index):
        ip = ipaddress.ip_address(a.get("address"))
        if ip.version == 6 and ip.is_link_local:
            continue
        _do(f"deleting address {ip}/{a['prefixlen']}", ipr.addr, "del", index=index, address=str(ip),
            prefixlen=a["prefixlen"])
    for iface in wanted:
        _do(f"adding address {iface}", ipr.addr, "add", index=index, address=str(iface.ip),
            prefixlen=iface.network.prefixlen)


def update_interface(want: Interface) -> Interface:
    """UpdateInterface: configure the link whose MAC is ``want.hw_addr``; returns it as it is now.

    Raises NetworkError: INVALID_ARGUMENT (no/bad MAC, bad address, bad name), NOT_FOUND (no such
    link), INTERNAL (netlink refused). The link is put back up even when a step fails."""
    if not want.hw_addr:
        raise NetworkError("INVALID_ARGUMENT", "Interface.hwAddr is empty: the agent finds the link by its MAC")
    mac = normalise_mac(want.hw_addr)
    wanted = [parse_address(a) for a in want.addresses]
    if want.name and (len(want.name.encode()) > 15 or "/" in want.name or want.name.strip() != want.name):
        raise NetworkError("INVALID_ARGUMENT", f"interface name {want.name!r} is not a valid link name")
    with _Netlink() as ipr:
        link = _link_by_mac(ipr, mac)
        index = link["index"]
        try:
            _do(f"setting {link.get('ifname')} down", ipr.link, "set", index=index, state="down")
            _replace_addresses(ipr, index, wanted)
            if want.name and want.name != link.get("ifname"):
                _do(f"renaming {link.get('ifname')} to {want.name}", ipr.link, "set", index=index, ifname=want.name)
            if want.mtu:
                _do(f"setting MTU {want.mtu}", ipr.link, "set", index=index, mtu=want.mtu)
            if want.raw_flags & IFF_NOARP:
                _do("setting NOARP", ipr.link, "set", index=index, flags=IFF_NOARP, change=IFF_NOARP)
        finally:
            _do("setting the link up", ipr.link, "set", index=index, state="up")
        got = _interface(ipr, ipr.get_links(index)[0])
    log.info("interface %s (%s): addresses %s, mtu %d", got.name, mac,
             " ".join(f"{a.address}/{a.mask}" for a in got.addresses) or "none", got.mtu)
    return got


# ------------------------------------------------------------------ routes


@dataclass
class _RouteSpec:
    """A requested route, parsed and resolved: what netlink gets."""

    route: Route
    index: int
    dst: object
    gateway: object
    source: object

    def netlink_args(self) -> dict:
        args = {"oif": self.index, "table": RT_TABLE_MAIN, "scope": self.route.scope}
        if self.dst is not None:
            args["dst"] = f"{self.dst.network_address}/{self.dst.prefixlen}"
        elif self.gateway is None:
            args["dst"] = "0.0.0.0/0"  # "default dev eth0": Go sets gateway 0.0.0.0, i.e. on-link
        else:
            args["dst"] = "::/0" if self.gateway.version == 6 else "0.0.0.0/0"
        if self.gateway is not None:
            args["gateway"] = str(self.gateway)
        if self.source is not None:
            args["prefsrc"] = str(self.source)
        return args

    def describe(self) -> str:
        r = self.route
        return f"route dest({r.dest or 'default'})/gw({r.gateway})/dev({r.device})"


def _resolve_route(ipr, route: Route) -> _RouteSpec:
    index = _link_by_name(ipr, route.device)
    dst = _parse_dest(route.dest)
    gateway = _parse_ip(route.gateway, "route gateway") if route.gateway.strip() else None
    source = _parse_ip(route.source, "route source") if route.source.strip() else None
    if not 0 <= route.scope <= 255:
        raise NetworkError("INVALID_ARGUMENT", f"route scope {route.scope} is not 0..255")
    return _RouteSpec(route, index, dst, gateway, source)


def _deletable(r, lo_index: int) -> bool:
    """Go's deleteRoutes rule: keep routes on lo and routes the kernel installed."""
    return r.get("oif") != lo_index and r["proto"] != RTPROT_KERNEL


def _delete_routes(ipr) -> None:
    lo = ipr.link_lookup(ifname="lo")
    lo_index = lo[0] if lo else -1
    for r in _main_routes(ipr):
        if not _deletable(r, lo_index):
            continue
        args = {"table": RT_TABLE_MAIN, "dst_len": r["dst_len"], "family": r["family"], "oif": r.get("oif"),
                "proto": r["proto"], "scope": r["scope"], "type": r["type"]}
        if r.get("dst"):
            args["dst"] = r.get("dst")
        if r.get("gateway"):
            args["gateway"] = r.get("gateway")
        _do(f"deleting route {r.get('dst') or 'default'}/{r['dst_len']}", ipr.route, "del", **args)


def update_routes(routes: list[Route]) -> list[Route]:
    """UpdateRoutes: the main table becomes ``routes`` (plus lo's and the kernel's own).

    Returns ``routes`` (as Go). Raises NetworkError: INVALID_ARGUMENT / NOT_FOUND before anything
    is deleted, INTERNAL when netlink refuses a route (the table is then partly updated: the
    message names the route; ListRoutes tells what is there)."""
    with _Netlink() as ipr:
        specs = [_resolve_route(ipr, r) for r in routes]
        _delete_routes(ipr)
        for spec in sorted(specs, key=lambda s: s.gateway is not None):  # on-link routes first
            _do(f"adding {spec.describe()}", ipr.route, "replace", **spec.netlink_args())
    log.info("routes: %s", "; ".join(s.describe() for s in specs) or "none")
    return routes


# ------------------------------------------------------------------ neighbours


def add_arp_neighbors(neighbors: list[Neighbor]) -> None:
    """AddARPNeighbors: each static neighbour on its device (replacing an entry for its address).

    Raises NetworkError: INVALID_ARGUMENT (bad address or MAC), NOT_FOUND (no such device),
    INTERNAL. All are checked before the first one is added."""
    with _Netlink() as ipr:
        todo = []
        for n in neighbors:
            ip = parse_address(n.address).ip if n.address.address else None
            if ip is None:
                raise NetworkError("INVALID_ARGUMENT", f"neighbour on {n.device or '?'} has no toIPAddress")
            lladdr = normalise_mac(n.lladdr) if n.lladdr else None
            todo.append((n, ip, lladdr, _link_by_name(ipr, n.device)))
        for n, ip, lladdr, index in todo:
            args = {"dst": str(ip), "ifindex": index, "state": n.state or NUD_PERMANENT,
                    "family": AF_INET6 if ip.version == 6 else AF_INET}
            if lladdr:
                args["lladdr"] = lladdr
            if n.flags:
                args["flags"] = n.flags
            _do(f"adding neighbour {ip} on {n.device}", ipr.neigh, "replace", **args)
    log.info("neighbours: %d added", len(neighbors))


# ------------------------------------------------------------------ DNS


def resolv_conf_text(lines: list[str]) -> str:
    """CreateSandbox.dns (resolv.conf lines) -> the file's text (stripped lines, newline-ended)."""
    return "".join(line.strip() + "\n" for line in lines if line.strip())


__all__ = ["IPAddress", "Interface", "Neighbor", "NetworkError", "Route", "add_arp_neighbors",
           "list_interfaces", "list_routes", "normalise_mac", "parse_address", "resolv_conf_text",
           "update_interface", "update_routes"]
