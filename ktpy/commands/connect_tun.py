"""The TUN mode of `ktpy connect`: routes, a userspace TCP stack and cluster DNS.

Order matters both ways. Up: read everything (ranges, domain, the laptop's
resolver and routes) before changing anything; then journal and make each host
change; point the resolver at ktpy's DNS server last. Down: put the resolver
and routes back first (the journal, newest first), then stop ktpy's servers,
then the shadow pod.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import click

from ktpy.cluster import ranges
from ktpy.cluster.api import ClusterApi, Kind
from ktpy.cluster.name_watch import KnownNames
from ktpy.config import TUN_MTU, Settings, unprivileged_identity
from ktpy.errors import (
    AlreadyRunning,
    Forbidden,
    KtpyError,
    NeedsRoot,
    NoTunDevice,
    UsageProblem,
)
from ktpy.host import heal, recovery, routes
from ktpy.host import network as host
from ktpy.host.journal import Journal
from ktpy.host.resolver import ResolvConfGuard, ResolvedGuard, ResolverGuard, ResolverKind
from ktpy.host.runner import Runner, run
from ktpy.logs import get_logger
from ktpy.net.dns import ClusterNames, Collision
from ktpy.net.dns_server import DnsServer
from ktpy.net.listener import unix_listener
from ktpy.net.socks_server import SocksServer
from ktpy.net.tun_process import DnsSpec, TunProcess
from ktpy.params import IPNetwork
from ktpy.session import Session

TUN_DEVICE = Path("/dev/net/tun")
TUN_STATS_FILE = "tun-stats.json"  # the stack's counters, rewritten every second


SOCKS_SOCKET = "socks.sock"  # the TUN stack's way into the tunnel


def session_run_dir(runtime_dir: Path, session: str, owner: tuple[int, int] | None) -> Path:
    """``<runtime dir>/<session>``, made 0700 and owned by ``owner`` (uid, gid): files
    only this session's processes use, the TUN stack's SOCKS5 socket among them."""
    runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = runtime_dir / session
    path.mkdir(mode=0o700)
    if owner is not None:
        os.chown(path, *owner)
    return path


log = get_logger("ktpy.connect")


def preflight(settings: Settings) -> None:
    """Everything that can be refused before anything changes."""
    if os.geteuid() != 0:
        raise NeedsRoot("ktpy connect makes a TUN device and routes, which needs root")
    if not TUN_DEVICE.exists():
        raise NoTunDevice(f"{TUN_DEVICE} does not exist: this kernel or container has no TUN")
    running = recovery.running_sessions(settings.journal_dir)
    if running:
        owner = running[0].header.owner.describe() if running[0].header else "unknown"
        raise AlreadyRunning(f"another ktpy connect is running on this machine ({owner})")
    line, healed = heal.heal(settings.journal_dir)
    if line:
        click.echo(line)
    if not healed:
        raise KtpyError(
            "host changes of a killed ktpy connect could not be put back",
            hint="Fix what the line above names, then 'sudo ktpy clean --local'.",
        )


def check_include(include: Iterable[IPNetwork], *, force: bool, runner: Runner = run) -> None:
    """--include-cidr asks for a route ktpy would not make: refused before anything
    changes, rather than skipped with a warning once the session is up."""
    wanted = list(include)
    for network in wanted:
        if network.version != 4:
            raise UsageProblem(
                f"--include-cidr {network}: only IPv4 is carried through the TUN device",
                hint="Leave IPv6 ranges out; 'ktpy forward' reaches an IPv6-only Service.",
            )
        if network.prefixlen == 0:
            raise UsageProblem(
                f"--include-cidr {network} would take every address of this machine",
                hint="Name the ranges to reach (the cluster's own are routed already).",
            )
    if force or not wanted:
        return
    host_routes = routes.read_host_routes(runner)
    for network in wanted:
        found = routes.conflicts(network, host_routes)
        if found:
            raise UsageProblem(
                f"--include-cidr {network} overlaps this machine's route {found[0].describe()}",
                hint="Add --force-routes to route it anyway, or choose a narrower range.",
            )


def api_addresses(api_url: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """The API server's addresses: never routed into the tunnel (it carries the tunnel)."""
    host_name = urlparse(api_url).hostname or ""
    try:
        return (ipaddress.ip_address(host_name),)
    except ValueError:
        pass
    found = {info[4][0] for info in socket.getaddrinfo(host_name, None, proto=socket.IPPROTO_TCP)}
    return tuple(ipaddress.ip_address(str(a).split("%", 1)[0]) for a in sorted(found))


def chosen_ranges(
    found: Iterable[IPNetwork], include: Iterable[IPNetwork], exclude: Iterable[IPNetwork]
) -> tuple[IPNetwork, ...]:
    """The cluster's ranges plus --include-cidr, with every --exclude-cidr cut out."""
    wanted: list[IPNetwork] = list(dict.fromkeys([*found, *include]))
    for cut in exclude:
        kept: list[IPNetwork] = []
        for net in wanted:
            if net.version != cut.version or not net.overlaps(cut):
                kept.append(net)
            elif not cut.supernet_of(net):  # type: ignore[arg-type]
                kept.extend(net.address_exclude(cut))  # type: ignore[arg-type]
        wanted = kept
    return tuple(wanted)


def routed_families(chosen: Iterable[IPNetwork]) -> tuple[tuple[IPNetwork, ...], str | None]:
    """The ranges to route, and the line saying which are not. The stack carries IPv4
    only: an IPv6 range routed into it would take connections it cannot answer, so
    it is left to the host's own routes (a connection to it fails at once)."""
    chosen = tuple(chosen)
    v6 = [net for net in chosen if net.version == 6]
    line = (
        f"Not routed: {', '.join(map(str, v6))}: the TUN stack carries IPv4 only "
        "(IPv6 addresses work through the SOCKS5 proxy)"
        if v6
        else None
    )
    return tuple(net for net in chosen if net.version == 4), line


@dataclass
class ClusterFacts:
    service: ranges.Ranges
    pods: ranges.Ranges
    domain: str
    domain_source: str
    namespaces: frozenset[str]
    namespaces_source: str
    services: frozenset[str]
    # Kept current by watches once the DNS server runs; None: namespaces may not be listed.
    namespace_watch: KnownNames | None
    service_watch: KnownNames


def read_cluster(
    api: ClusterApi, session: Session, namespace: str, dns_namespaces: Iterable[str]
) -> ClusterFacts:
    service = ranges.service_ranges(api, namespace)
    pods = ranges.pod_ranges(api, namespace)
    domain = ranges.cluster_domain(session.run("cat /etc/resolv.conf"))
    domain_source = "the shadow pod's resolver search path"
    if domain is None:
        domain, domain_source = "cluster.local", "assumed (the shadow pod has no search path)"
    fixed = frozenset([namespace, *dns_namespaces])
    watch = KnownNames(api, Kind.NAMESPACE, None)
    namespace_watch: KnownNames | None
    try:
        namespaces = fixed | watch.list()
        namespace_watch, source = watch, "listed and watched"
    except Forbidden:
        namespace_watch, namespaces = None, fixed
        source = "the connect namespace and --dns-namespace"
    service_watch = KnownNames(api, Kind.SERVICE, namespace)
    services = service_watch.list()
    return ClusterFacts(
        service, pods, domain, domain_source, namespaces, source, services,
        namespace_watch, service_watch,
    )  # fmt: skip


RANGES_CLUSTER_ROLE = "docs/rbac/connect-ranges.yaml"


def degraded_note(facts: ClusterFacts) -> str | None:
    """One line when the cluster-wide reads were refused: what connect does without
    them, and the ClusterRole that gives them."""
    missing = [
        what
        for what, lacking in (
            ("the service range", facts.service.guessed),
            ("the pod range", facts.pods.guessed),
            ("other namespaces' names", facts.namespace_watch is None),
        )
        if lacking
    ]
    if not missing:
        return None
    effects = []
    if facts.service.guessed or facts.pods.guessed:
        effects.append("the ranges are guessed from this namespace")
    if facts.namespace_watch is None:
        effects.append("other namespaces resolve only with --dns-namespace")
    return (
        f"Note: without the ClusterRole ktpy-connect-ranges ({RANGES_CLUSTER_ROLE}) "
        f"{', '.join(missing)} could not be read: {'; '.join(effects)}"
    )


def report_collision(collision: Collision) -> None:
    """A namespace-shaped name the cluster has: said once, since it hides the same
    name on the laptop's resolvers (``web.dev`` with a Service web in namespace dev)."""
    click.echo(
        f"DNS: {collision.name} is answered by the cluster "
        f"({collision.cluster_name.rstrip('.')}) while connected, not by this machine's"
        " resolvers"
    )


@dataclass
class TunConnection:
    """Everything the TUN mode made on this machine, so it can be taken down in order."""

    journal: Journal | None = None
    network: host.Network | None = None
    stack: TunProcess | None = None  # the TUN stack and the DNS server, unprivileged
    watches: list[KnownNames] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    # Routing domains follow the namespaces (systemd-resolved) until teardown begins.
    _routing: threading.Lock = field(default_factory=threading.Lock)
    _torn_down: bool = False
    guard: ResolverGuard | None = None
    run_dir: Path | None = None  # this session's runtime files (the stack's stats)
    socks: SocksServer | None = None  # the stack's own SOCKS5 proxy, on a unix socket
    # time.monotonic() once the stack serves the device and once the resolver points
    # at the DNS server (start-up timings)
    tun_up_at: float = 0.0
    dns_up_at: float = 0.0

    def up(
        self,
        api: ClusterApi,
        settings: Settings,
        session: Session,
        *,
        include: Iterable[IPNetwork],
        exclude: Iterable[IPNetwork],
        dns_namespaces: Iterable[str],
        force_routes: bool,
        mtu: int | None,
    ) -> None:
        ns = settings.namespace
        facts = read_cluster(api, session, ns, dns_namespaces)
        chosen = chosen_ranges((*facts.service.networks, *facts.pods.networks), include, exclude)
        wanted, unrouted_line = routed_families(chosen)
        request = host.HostRequest(
            session=session.id,
            ranges=wanted,
            api_addresses=api_addresses(api.host) if hasattr(api, "host") else (),
            routing_domains=(facts.domain, *sorted(facts.namespaces)),
            mtu=mtu or TUN_MTU,
            force=force_routes,
        )
        survey = host.survey(request)
        if survey.resolver.kind is ResolverKind.RESOLVED:
            # resolved sends single-label names to no link's server: give it the
            # connect namespace's search domain so `svc` becomes svc.<ns>.svc.<domain>.
            request = dataclasses.replace(request, search_domains=(f"{ns}.svc.{facts.domain}",))
        names = ClusterNames(
            domain=facts.domain,
            namespace=ns,
            namespaces=facts.namespaces,
            services=facts.services,
            cidrs=chosen,
            search=survey.search,
        )
        # The stack parses what every local program sends into the device: it runs
        # as the invoking user (nobody for plain root) and reaches the tunnel through
        # a unix socket only that user may open.
        stack_user = unprivileged_identity(settings.invoker)
        self.run_dir = session_run_dir(settings.runtime_dir, session.id, stack_user)
        self.socks = SocksServer(
            session.open_flow, listener=unix_listener(self.run_dir / SOCKS_SOCKET, stack_user)
        ).start()
        self.journal = Journal.create(settings.journal_dir, session.id)
        self.network = host.open_network(self.journal, survey, mtu=request.mtu, offload=True)
        # Port 53 needs root: bound here, served by the unprivileged child alone (this
        # process closes its copies once the child has them).
        udp, tcp = DnsServer.bind_listeners(str(survey.tun_address), 53)
        dns = DnsSpec(names, survey.upstreams, ("127.0.0.1", session.spec.dns_port), udp, tcp)
        # The stack and the DNS server run in a process of their own, unprivileged, and
        # reach the cluster through this process's SOCKS5 proxy (why:
        # ktpy/net/tun_process.py).
        stack = TunProcess(
            self.network.tun.fileno(),
            self.socks.socket_path,
            mtu=request.mtu,
            max_buffered=settings.tun_buffer,
            stats_file=self.run_dir / TUN_STATS_FILE,
            session=session.id,
            debug=settings.debug,
            log_format=settings.log_format,
            on_exit=session.lose,
            user=stack_user,
            dns=dns,
            on_collision=report_collision,
        )
        try:
            self.stack = stack.start()
        finally:
            udp.close()
            tcp.close()
        self.tun_up_at = time.monotonic()  # the stack and its DNS server serve
        resolver = host.point_resolver(self.journal, survey, request)
        say = lambda line: click.echo(line, err=True)  # noqa: E731
        server = [str(survey.tun_address)]
        self.guard = (
            ResolvConfGuard(self.journal, server, say)
            if resolver.choice.kind is ResolverKind.RESOLV_CONF
            else ResolvedGuard(
                survey.tun_name, server, request.routing_domains, request.search_domains, say
            )
        ).start()
        self.dns_up_at = time.monotonic()
        self._watch_names(facts, ns, dns_namespaces, survey, request)

        self.lines += [
            f"Service range {', '.join(map(str, facts.service.networks))} "
            f"(from {facts.service.source})",
            f"Pod range {', '.join(map(str, facts.pods.networks))} (from {facts.pods.source})",
            f"Routed through {survey.tun_name}: {', '.join(map(str, self.network.routed))}",
        ]
        self.lines += [f"Not routed: {warning}" for warning in survey.warnings()]
        if unrouted_line:
            self.lines.append(unrouted_line)
        self.lines += [
            f"Cluster domain {facts.domain} (from {facts.domain_source}); "
            f"namespaces {facts.namespaces_source}",
            f"DNS {survey.tun_address}:53 via {resolver.choice.kind.value}: cluster names "
            "go to the cluster (svc.ns first: a name the cluster lacks goes on), "
            f"everything else to {', '.join(survey.upstreams) or 'the original resolvers'}",
        ]
        self.lines += [f"Warning: {w}" for w in resolver.warnings]
        if note := degraded_note(facts):
            self.lines.append(note)

    def _watch_names(
        self,
        facts: ClusterFacts,
        ns: str,
        given: Iterable[str],
        survey: host.HostFacts,
        request: host.HostRequest,
    ) -> None:
        """Namespaces and the connect namespace's Services, as they come and go; with
        systemd-resolved, a namespace is also a routing domain of the TUN link."""
        dns = self.stack
        assert dns is not None
        fixed = frozenset([ns, *given])

        def namespaces_changed(names: frozenset[str]) -> None:
            known = fixed | names
            dns.set_known(namespaces=known)
            self._route_names(survey, request, (facts.domain, *sorted(known)))

        if facts.namespace_watch is not None:
            facts.namespace_watch.on_change = namespaces_changed
            self.watches.append(facts.namespace_watch.start())
        facts.service_watch.on_change = lambda names: dns.set_known(services=names)
        self.watches.append(facts.service_watch.start())

    def _route_names(
        self, survey: host.HostFacts, request: host.HostRequest, domains: tuple[str, ...]
    ) -> None:
        with self._routing:
            if self._torn_down or self.journal is None:
                return
            try:
                if host.route_names(self.journal, survey, request, domains):
                    log.debug("routing domains updated", domains=" ".join(domains))
                    if isinstance(self.guard, ResolvedGuard):
                        self.guard.follow_domains(domains, request.search_domains)
            except (KtpyError, ValueError, OSError) as exc:
                # The names of that namespace keep failing until the next change;
                # everything else resolves as before.
                log.warning("could not update the DNS routing domains", reason=str(exc))

    def down(self) -> list[str]:
        """Undo in order; returns what could not be undone."""
        for watch in self.watches:
            watch.stop()
        if self.guard is not None:
            self.guard.stop()  # before the journal is replayed: no repair after the undo
        with self._routing:  # no routing-domain update after the revert
            self._torn_down = True
        problems: list[str] = []
        # The stack first: it reads the device the journal is about to delete. The DNS
        # server last: it answers until the resolver no longer points at it.
        if self.stack is not None:
            self.stack.stop_stack()
        if self.journal is not None:
            report = host.tear_down(self.journal, self.network)
            problems += report.failures
            self.journal.close()
        elif self.network is not None:
            self.network.tun.close()
        if self.stack is not None:
            self.stack.stop()
        if self.socks is not None:
            self.socks.stop()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems
