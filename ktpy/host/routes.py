"""Routes for the cluster's ranges through ktpy's TUN device, without taking any
traffic the laptop already sends somewhere else.

The decisions are pure (``plan_routes``): a wanted range that overlaps a route
the host already has, other than a default route, is left alone with a
warning naming both (a corporate VPN, the LAN, Docker's bridge keep their
traffic), unless forced; addresses that must keep their current path (the API
server the tunnel runs through, the laptop's own nameservers) are cut out of
the ranges that hold them. Carrying out a plan goes through the journal, one
route at a time, with ``ip route`` (iproute2 is on every Linux laptop, so no
netlink library is needed).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ktpy.errors import HostChangeFailed
from ktpy.host.journal import Change, Journal
from ktpy.host.runner import Runner, check, run
from ktpy.host.undo import RouteDelete
from ktpy.params import IPAddress, IPNetwork

# Route types that carry no traffic of their own toward a destination: the local
# table's entries, and 'throw' (fall through to the next policy rule).
_NOT_FORWARDING = frozenset({"local", "broadcast", "anycast", "multicast", "throw", "nat"})


@dataclass(frozen=True)
class HostRoute:
    """One route of the host, as much of it as the overlap decision and messages need."""

    destination: IPNetwork
    table: str = "main"
    type: str = "unicast"
    device: str | None = None
    gateway: str | None = None
    protocol: str | None = None

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def describe(self) -> str:
        words = [] if self.type == "unicast" else [self.type]
        words.append(str(self.destination))
        if self.gateway:
            words.append(f"via {self.gateway}")
        if self.device:
            words.append(f"dev {self.device}")
        if self.table != "main":
            words.append(f"table {self.table}")
        return " ".join(words)


def parse_routes(text: str, version: int) -> list[HostRoute]:
    """Routes from ``ip -j -4|-6 route show table all``."""
    found: list[HostRoute] = []
    items: list[dict[str, Any]] = json.loads(text or "[]")
    for item in items:
        dst = str(item.get("dst", ""))
        if dst == "default":
            dst = "0.0.0.0/0" if version == 4 else "::/0"
        try:
            destination = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue  # a destination ktpy never routes (none seen in practice)
        found.append(
            HostRoute(
                destination=destination,
                table=str(item.get("table", "main")),
                type=str(item.get("type", "unicast")),
                device=item.get("dev"),
                gateway=item.get("gateway"),
                protocol=item.get("protocol"),
            )
        )
    return found


def read_host_routes(runner: Runner = run) -> list[HostRoute]:
    """Every route of every table, IPv4 and IPv6: policy routing (WireGuard, Tailscale)
    keeps its routes outside the main table."""
    routes: list[HostRoute] = []
    for version in (4, 6):
        done = check(
            runner(["ip", "-j", f"-{version}", "route", "show", "table", "all"]),
            "read the host's routes",
        )
        routes += parse_routes(done.stdout, version)
    return routes


def conflicts(
    wanted: IPNetwork, host_routes: Iterable[HostRoute], own_devices: Sequence[str] = ()
) -> list[HostRoute]:
    """The host's routes that carry some address of ``wanted`` today: overlapping ones
    (either way round), not default routes, not ktpy's own device's."""
    return [
        route
        for route in host_routes
        if route.destination.version == wanted.version
        and not route.is_default
        and route.type not in _NOT_FORWARDING
        and route.device not in own_devices
        and route.destination.overlaps(wanted)
    ]


def split_around(network: IPNetwork, addresses: Iterable[IPAddress]) -> list[IPNetwork]:
    """``network`` as the fewest networks that cover it except ``addresses``."""
    pieces: list[IPNetwork] = [network]
    for address in addresses:
        host = ipaddress.ip_network(address)
        next_pieces: list[IPNetwork] = []
        for piece in pieces:
            if piece.version == host.version and host.subnet_of(piece):  # type: ignore[arg-type]
                next_pieces += piece.address_exclude(host)  # type: ignore[arg-type]
            else:
                next_pieces.append(piece)
        pieces = next_pieces
    return sorted(pieces, key=lambda n: (n.version, n.network_address, n.prefixlen))


def collapse(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Duplicates and nested ranges merged, per address family."""
    merged: list[IPNetwork] = []
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    merged += ipaddress.collapse_addresses(v4)
    merged += ipaddress.collapse_addresses(v6)
    return merged


@dataclass(frozen=True)
class Skipped:
    wanted: IPNetwork
    reason: str
    conflicts: tuple[HostRoute, ...] = ()

    def message(self) -> str:
        return f"not routing {self.wanted}: {self.reason}"


@dataclass(frozen=True)
class Forced:
    wanted: IPNetwork
    conflicts: tuple[HostRoute, ...]

    def message(self) -> str:
        names = "; ".join(route.describe() for route in self.conflicts)
        return f"routing {self.wanted} although it overlaps {names} (forced)"


@dataclass(frozen=True)
class Split:
    wanted: IPNetwork
    address: IPAddress
    why: str

    def message(self) -> str:
        return f"routing {self.wanted} except {self.address} ({self.why})"


@dataclass(frozen=True)
class RoutePlan:
    add: tuple[IPNetwork, ...]
    skipped: tuple[Skipped, ...] = ()
    forced: tuple[Forced, ...] = ()
    splits: tuple[Split, ...] = ()

    def warnings(self) -> list[str]:
        return [item.message() for item in self.skipped] + [item.message() for item in self.forced]


def plan_routes(
    wanted: Iterable[IPNetwork],
    host_routes: Sequence[HostRoute],
    *,
    never_route: Mapping[IPAddress, str] | None = None,
    force: bool = False,
    own_devices: Sequence[str] = (),
) -> RoutePlan:
    """Which routes to add for the ``wanted`` ranges.

    ``never_route`` maps addresses that must keep their current path to why (``"API
    server"``, ``"nameserver"``). ``force`` adds overlapping ranges anyway (the more
    specific route wins, so part of the other route's traffic moves to ktpy), except a
    range the host routes with exactly the same prefix: the kernel refuses a second one.
    """
    keep_off = dict(never_route or {})
    add: list[IPNetwork] = []
    skipped: list[Skipped] = []
    forced: list[Forced] = []
    splits: list[Split] = []
    for network in collapse(wanted):
        if network.prefixlen == 0:
            skipped.append(Skipped(network, "it would take every address, like a default route"))
            continue
        found = tuple(conflicts(network, host_routes, own_devices))
        if found:
            same = tuple(r for r in found if r.destination == network and r.table == "main")
            names = "; ".join(route.describe() for route in found)
            if same:
                skipped.append(Skipped(network, f"the host already routes it: {names}", same))
                continue
            if not force:
                skipped.append(
                    Skipped(
                        network,
                        f"it overlaps the host's route {names} (a VPN or local network?);"
                        " use force to route it anyway",
                        found,
                    )
                )
                continue
            forced.append(Forced(network, found))
        inside = sorted(
            (a for a in keep_off if a.version == network.version and a in network),
            key=int,
        )
        splits += [Split(network, address, keep_off[address]) for address in inside]
        pieces = split_around(network, inside)
        if not pieces:
            why = ", ".join(keep_off[a] for a in inside)
            skipped.append(Skipped(network, f"it is only the {why}'s own address"))
        add += pieces
    return RoutePlan(tuple(add), tuple(skipped), tuple(forced), tuple(splits))


def add_routes(
    journal: Journal,
    device: str,
    networks: Iterable[IPNetwork],
    *,
    source: Mapping[int, IPAddress] | None = None,
    runner: Runner = run,
) -> list[IPNetwork]:
    """Add a route through ``device`` for each network, each journalled first. ``source``
    gives the source address per IP version (the TUN device's own address)."""
    added: list[IPNetwork] = []
    for network in networks:
        journal.record(Change(f"route {network} dev {device}", RouteDelete(str(network), device)))
        argv = ["ip", "route", "add", str(network), "dev", device]
        if source and network.version in source:
            argv += ["src", str(source[network.version])]
        done = runner(argv)
        if not done.ok:
            raise HostChangeFailed(f"cannot add route {network} dev {device}: {done.describe()}")
        added.append(network)
    return added
