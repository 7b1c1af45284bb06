"""The TUN network on the host (device, routes, resolver), opened and closed in order.

``ktpy connect`` calls these four steps:

1. ``survey``: read everything first and decide, changing nothing (routes to add
   and skip, resolver backend, the laptop's own nameservers, the TUN address),
   so conflicts are reported before anything is touched.
2. ``open_network``: the TUN device and the routes, each journalled first.
   Connect then starts its TCP stack on the device and its DNS server on
   ``facts.tun_address`` port 53, forwarding other names to ``facts.upstreams``.
3. ``point_resolver``: only now, with the DNS server listening, send cluster
   names to it. ``route_names`` later replaces the routing domains (systemd-resolved)
   as namespaces come and go.
4. ``tear_down``: undo everything (newest first) and close the device.

A typical caller::

    facts = survey(request)
    with Journal.create(settings.journal_dir, request.session) as journal:
        network = None
        try:
            network = open_network(journal, facts, mtu=request.mtu)
            ...  # TCP stack on network.tun.fileno(), DNS server on facts.tun_address
            point_resolver(journal, facts, request)
            ...  # run until stopped
        finally:
            report = tear_down(journal, network)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ktpy.config import TUN_MTU
from ktpy.host.journal import Journal, UndoReport
from ktpy.host.links import TunDevice, addresses_in_use, open_tun, pick_tun_address
from ktpy.host.links import tun_name as make_tun_name
from ktpy.host.resolvconf import RESOLV_CONF
from ktpy.host.resolver import (
    ResolverChoice,
    ResolverKind,
    ResolverSetup,
    configure_resolver,
    detect_resolver,
    laptop_search_domains,
    set_domains,
    upstream_nameservers,
)
from ktpy.host.routes import RoutePlan, add_routes, plan_routes
from ktpy.host.routes import read_host_routes as read_routes
from ktpy.host.runner import Runner, run
from ktpy.params import IPAddress, IPNetwork


@dataclass(frozen=True)
class HostRequest:
    """What connect wants of the host (ranges and domains come from the cluster)."""

    session: str
    ranges: tuple[IPNetwork, ...]
    api_addresses: tuple[IPAddress, ...] = ()
    routing_domains: tuple[str, ...] = ("cluster.local",)
    search_domains: tuple[str, ...] = ()
    mtu: int = TUN_MTU
    force: bool = False


@dataclass(frozen=True)
class HostFacts:
    """Read before any change; everything connect reports before it starts."""

    resolver: ResolverChoice
    upstreams: tuple[str, ...]  # the laptop's own nameservers, for ktpy's DNS server
    routes: RoutePlan
    tun_name: str
    tun_address: ipaddress.IPv4Address
    search: tuple[str, ...] = ()  # the laptop's own search domains, for ktpy's DNS server

    def warnings(self) -> list[str]:
        return self.routes.warnings()


def _addresses(texts: tuple[str, ...]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for text in texts:
        try:
            found.append(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            continue
    return found


def survey(
    request: HostRequest, *, runner: Runner = run, resolv_conf: Path = RESOLV_CONF
) -> HostFacts:
    choice = detect_resolver(runner, resolv_conf)
    upstreams = tuple(upstream_nameservers(choice, resolv_conf))
    never_route: dict[IPAddress, str] = dict.fromkeys(_addresses(upstreams), "nameserver")
    never_route.update(dict.fromkeys(request.api_addresses, "API server"))
    name = make_tun_name(request.session)
    plan = plan_routes(
        request.ranges,
        read_routes(runner),
        never_route=never_route,
        force=request.force,
        own_devices=(name,),
    )
    address = pick_tun_address(addresses_in_use(runner))
    search = tuple(laptop_search_domains(choice, resolv_conf))
    return HostFacts(choice, upstreams, plan, name, address, search)


@dataclass
class Network:
    tun: TunDevice
    routed: tuple[IPNetwork, ...]


def open_network(
    journal: Journal,
    facts: HostFacts,
    *,
    mtu: int = TUN_MTU,
    runner: Runner = run,
    offload: bool = False,
) -> Network:
    tun = open_tun(
        journal,
        name=facts.tun_name,
        address=facts.tun_address,
        mtu=mtu,
        runner=runner,
        offload=offload,
    )
    try:
        routed = add_routes(
            journal, tun.name, facts.routes.add, source={4: facts.tun_address}, runner=runner
        )
    except BaseException:
        # The journal still deletes the device and any route added; this only frees the fd.
        tun.close()
        raise
    return Network(tun, tuple(routed))


def point_resolver(
    journal: Journal,
    facts: HostFacts,
    request: HostRequest,
    *,
    runner: Runner = run,
    resolv_conf: Path = RESOLV_CONF,
) -> ResolverSetup:
    setup = configure_resolver(
        journal,
        facts.resolver,
        link=facts.tun_name,
        server=str(facts.tun_address),
        routing_domains=request.routing_domains,
        search_domains=request.search_domains,
        runner=runner,
        resolv_conf=resolv_conf,
    )
    # The upstreams read in survey() are the ones that count: read before any change.
    return ResolverSetup(setup.choice, facts.upstreams, setup.warnings)


def route_names(
    journal: Journal,
    facts: HostFacts,
    request: HostRequest,
    routing_domains: tuple[str, ...],
    *,
    runner: Runner = run,
) -> bool:
    """Send names under ``routing_domains`` to ktpy's DNS server from now on, in
    place of ``request.routing_domains``; False if the backend needs nothing
    (resolv.conf sends it every name already). Journalled by ``point_resolver``."""
    if facts.resolver.kind is not ResolverKind.RESOLVED:
        return False
    set_domains(
        journal,
        link=facts.tun_name,
        routing_domains=routing_domains,
        search_domains=request.search_domains,
        runner=runner,
    )
    return True


def tear_down(journal: Journal, network: Network | None, *, runner: Runner = run) -> UndoReport:
    """Undo every journalled change, newest first, then close the device. The journal
    file stays (for ``clean --local``) only if an undo failed."""
    try:
        return journal.undo_all(runner)
    finally:
        if network is not None:
            network.tun.close()
