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
import pwd
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import click
import yaml

from ktpy.cluster import ranges
from ktpy.cluster.api import ClusterApi, Kind
from ktpy.cluster.api.kubeconfig import flattened
from ktpy.cluster.name_watch import KnownNames
from ktpy.config import TUN_MTU, Settings, unprivileged_identity, unreadable_kubeconfig
from ktpy.errors import (
    AlreadyRunning,
    Forbidden,
    KtpyError,
    NeedsRoot,
    NoTunDevice,
    UnreadableInstall,
    UsageProblem,
)
from ktpy.host import heal, recovery, routes
from ktpy.host import network as host
from ktpy.host.helper import HostHelper
from ktpy.host.resolver import ResolverKind
from ktpy.host.runner import Runner, run
from ktpy.logs import get_logger
from ktpy.net.dns import ClusterNames, Collision
from ktpy.net.listener import unix_listener
from ktpy.net.socks_server import SocksServer
from ktpy.net.tun_process import DnsSpec, TunProcess
from ktpy.params import IPNetwork
from ktpy.privileges import drop_privileges, interpreter_paths, readable_by
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
class Unprivileged:
    """What giving up root leaves the session: the root helper that makes the host
    changes, the session's runtime directory, and settings this user can act on."""

    helper: HostHelper
    run_dir: Path
    settings: Settings


KUBECONFIG_COPY = "kubeconfig"


def give_up_root(settings: Settings, session_id: str) -> Unprivileged:
    """As root, once the refusals are past: start the root helper, read the kubeconfig
    (the user's may sit where only root reads, as root's own does), then become the
    invoking user (``nobody`` for plain root) for good. Everything after this parses
    what the cluster or local programs send, and runs as that user."""
    identity = unprivileged_identity(settings.invoker)
    assert identity is not None, "preflight: connect runs as root"
    uid, gid = identity
    user, home = settings.invoker.user, str(settings.invoker.home)
    if not settings.invoker.via_sudo:
        entry = _passwd(uid)
        user, home = (entry.pw_name, entry.pw_dir) if entry else (str(uid), "/")
    for needed in interpreter_paths():
        if not readable_by(needed, uid, gid):
            raise UnreadableInstall(
                f"{needed} cannot be read by {user} (uid {uid}), whom connect becomes "
                "once its root helper runs"
            )
    try:
        kubeconfig = flattened(settings.kubeconfig)
    except (OSError, UnicodeError, yaml.YAMLError) as exc:
        where = os.pathsep.join(map(str, settings.kubeconfig))
        raise unreadable_kubeconfig(getattr(exc, "filename", None) or where, exc) from exc
    run_dir = session_run_dir(settings.runtime_dir, session_id, identity)
    helper = HostHelper.start(
        settings.journal_dir, run_dir, debug=settings.debug, log_format=settings.log_format
    )
    try:
        drop_privileges(uid, gid, environ=os.environ, home=home, user=user)
        copy = run_dir / KUBECONFIG_COPY  # 0600 in this user's 0700 directory
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(kubeconfig, handle)
    except BaseException:
        helper.close()
        raise
    log.debug("root given up", uid=uid, gid=gid, helper=helper.proc.pid)
    return Unprivileged(helper, run_dir, dataclasses.replace(settings, kubeconfig=(copy,)))


def _passwd(uid: int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


@dataclass
class TunConnection:
    """Everything the TUN mode made, so it can be taken down in order. The host
    changes are the root helper's; this process only asks for them, and closes it
    (``down``) whether or not ``up`` ran."""

    helper: HostHelper | None = None  # None: socks mode, nothing to ask of root
    made: bool = False  # the helper made host changes (and undoes them on close)
    stack: TunProcess | None = None  # the TUN stack and the DNS server
    watches: list[KnownNames] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    # Routing domains follow the namespaces (systemd-resolved) until teardown begins.
    _routing: threading.Lock = field(default_factory=threading.Lock)
    _torn_down: bool = False
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
        helper, run_dir = self.helper, self.run_dir
        assert helper is not None, "TUN mode gave root up first"
        assert run_dir is not None
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
        survey = helper.survey(request)
        search_domains: tuple[str, ...] = ()
        if survey.resolver is ResolverKind.RESOLVED:
            # resolved sends single-label names to no link's server: give it the
            # connect namespace's search domain so `svc` becomes svc.<ns>.svc.<domain>.
            search_domains = (f"{ns}.svc.{facts.domain}",)
        names = ClusterNames(
            domain=facts.domain,
            namespace=ns,
            namespaces=facts.namespaces,
            services=facts.services,
            cidrs=chosen,
            search=survey.search,
        )
        # The stack reaches the tunnel through a unix socket only this user may open.
        self.socks = SocksServer(
            session.open_flow, listener=unix_listener(run_dir / SOCKS_SOCKET)
        ).start()
        self.made = True  # from the first order on, the helper's close undoes
        opened = helper.open(search_domains)
        dns = DnsSpec(
            names, survey.upstreams, ("127.0.0.1", session.spec.dns_port), opened.udp, opened.tcp
        )
        # The stack and the DNS server run in a process of their own and reach the
        # cluster through this process's SOCKS5 proxy (why: ktpy/net/tun_process.py).
        stack = TunProcess(
            opened.tun_fd,
            self.socks.socket_path,
            mtu=request.mtu,
            max_buffered=settings.tun_buffer,
            stats_file=run_dir / TUN_STATS_FILE,
            session=session.id,
            debug=settings.debug,
            log_format=settings.log_format,
            on_exit=session.lose,
            dns=dns,
            on_collision=report_collision,
        )
        try:
            self.stack = stack.start()
        finally:
            opened.close()  # the child has its own copies
        self.tun_up_at = time.monotonic()  # the stack and its DNS server serve
        resolver = helper.point_resolver()
        self.dns_up_at = time.monotonic()
        self._watch_names(facts, ns, dns_namespaces)

        self.lines += [
            f"Service range {', '.join(map(str, facts.service.networks))} "
            f"(from {facts.service.source})",
            f"Pod range {', '.join(map(str, facts.pods.networks))} (from {facts.pods.source})",
            f"Routed through {survey.tun_name}: {', '.join(opened.routed)}",
        ]
        self.lines += [f"Not routed: {warning}" for warning in survey.warnings]
        if unrouted_line:
            self.lines.append(unrouted_line)
        self.lines += [
            f"Cluster domain {facts.domain} (from {facts.domain_source}); "
            f"namespaces {facts.namespaces_source}",
            f"DNS {survey.tun_address}:53 via {resolver.kind.value}: cluster names "
            "go to the cluster (svc.ns first: a name the cluster lacks goes on), "
            f"everything else to {', '.join(survey.upstreams) or 'the original resolvers'}",
        ]
        self.lines += [f"Warning: {w}" for w in resolver.warnings]
        if note := degraded_note(facts):
            self.lines.append(note)

    def _watch_names(self, facts: ClusterFacts, ns: str, given: Iterable[str]) -> None:
        """Namespaces and the connect namespace's Services, as they come and go; with
        systemd-resolved, a namespace is also a routing domain of the TUN link."""
        dns = self.stack
        assert dns is not None
        fixed = frozenset([ns, *given])

        def namespaces_changed(names: frozenset[str]) -> None:
            known = fixed | names
            dns.set_known(namespaces=known)
            self._route_names((facts.domain, *sorted(known)))

        if facts.namespace_watch is not None:
            facts.namespace_watch.on_change = namespaces_changed
            self.watches.append(facts.namespace_watch.start())
        facts.service_watch.on_change = lambda names: dns.set_known(services=names)
        self.watches.append(facts.service_watch.start())

    def _route_names(self, domains: tuple[str, ...]) -> None:
        with self._routing:
            if self._torn_down or self.helper is None:
                return
            try:
                if self.helper.route_names(domains):
                    log.debug("routing domains updated", domains=" ".join(domains))
            except KtpyError as exc:
                # The names of that namespace keep failing until the next change;
                # everything else resolves as before.
                log.warning("could not update the DNS routing domains", reason=str(exc))

    def down(self) -> list[str]:
        """Undo in order; returns what could not be undone."""
        for watch in self.watches:
            watch.stop()
        with self._routing:  # no routing-domain update after the revert
            self._torn_down = True
        problems: list[str] = []
        # The stack first: it reads the device the helper is about to delete. The DNS
        # server last: it answers until the resolver no longer points at it.
        if self.stack is not None:
            self.stack.stop_stack()
        if self.helper is not None:
            problems += self.helper.close()  # the guard, the journal, the runtime files
        if self.stack is not None:
            self.stack.stop()
        if self.socks is not None:
            self.socks.stop()
        return problems
