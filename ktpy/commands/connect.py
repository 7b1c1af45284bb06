"""`ktpy connect`: the cluster's pods, Services and names from this machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from ktpy import lifecycle, params
from ktpy.cluster import names
from ktpy.cluster.api import ClusterApi
from ktpy.cluster.labels import Role
from ktpy.commands import connect_tun
from ktpy.commands.context import make_api, settings_of
from ktpy.config import BUILT_IN, Settings
from ktpy.errors import UsageProblem
from ktpy.host import heal
from ktpy.logs import get_logger
from ktpy.net.socks_server import SocksServer
from ktpy.params import IPNetwork
from ktpy.session import Session, ShadowSpec

log = get_logger("ktpy.connect")

READY_LINE = "All looks good, now you can access to resources in the kubernetes cluster"


def pac_file(host: str, port: int) -> str:
    """A proxy auto-config that sends cluster names through the SOCKS proxy, the rest direct."""
    return (
        "function FindProxyForURL(url, host) {\n"
        '  if (dnsDomainIs(host, ".cluster.local") || dnsDomainIs(host, ".svc")'
        " || isPlainHostName(host)) {\n"
        f'    return "SOCKS5 {host}:{port}";\n'
        "  }\n"
        '  return "DIRECT";\n'
        "}\n"
    )


def proxy_environment(host: str, port: int) -> str:
    url = f"socks5h://{host}:{port}"
    return "\n".join(
        f"export {name}={url}" for name in ("ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy")
    )


def _listen(session: Session, port: int) -> SocksServer:
    # Bound before anything is created in the cluster: a busy port fails first.
    try:
        return SocksServer(session.open_flow, "127.0.0.1", port)
    except OSError as exc:
        raise UsageProblem(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
            hint="Pick another port with --socks-port, or stop what uses this one.",
        ) from exc


@dataclass(frozen=True)
class TunOptions:
    include: tuple[IPNetwork, ...]
    exclude: tuple[IPNetwork, ...]
    dns_namespaces: tuple[str, ...]
    force_routes: bool
    mtu: int | None


class Connect(lifecycle.SessionCommand):
    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        socks_port: int | None,
        tun: TunOptions | None,
        unprivileged: connect_tun.Unprivileged | None,
        *,
        print_pac: bool,
        print_env: bool,
    ) -> None:
        """socks_port: None in TUN mode when no port was asked for (the TUN stack has a
        SOCKS5 proxy of its own that no other program can reach). unprivileged: in TUN
        mode, the root helper this process (no longer root) asks for host changes."""
        self.api = api
        self.settings = settings
        self.socks_port = socks_port
        self.tun_options = tun
        self.print_pac = print_pac
        self.print_env = print_env
        self.tun = (
            connect_tun.TunConnection(helper=unprivileged.helper, run_dir=unprivileged.run_dir)
            if unprivileged is not None
            else connect_tun.TunConnection()
        )
        self.server: SocksServer | None = None

    def bind(self, session: Session) -> None:
        if self.socks_port is not None:
            self.server = _listen(session, self.socks_port)

    def start(self, session: Session) -> None:
        if self.server is not None:
            self.server.start()
        options = self.tun_options
        if options is not None:
            self.tun.up(
                self.api,
                self.settings,
                session,
                include=options.include,
                exclude=options.exclude,
                dns_namespaces=options.dns_namespaces,
                force_routes=options.force_routes,
                mtu=options.mtu,
            )

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        lines = [*self.tun.lines]
        if self.server is not None:
            host, bound = self.server.address
            lines.append(f"SOCKS5 proxy on {host}:{bound}")
            if self.print_pac:
                lines.append(pac_file(host, bound))
            if self.print_env:
                lines.append(proxy_environment(host, bound))
        timings = session.timings
        steps = {
            "pod_created": timings.pod_created,
            "pod_ready": timings.pod_ready,
            "portforward_open": timings.portforward_open,
            "ssh_up": timings.ssh_up,
            "tunnel_up": timings.tunnel_up,
        }
        if self.tun.tun_up_at:
            steps["tun_up"] = timings.since_start(self.tun.tun_up_at)
            steps["dns_up"] = timings.since_start(self.tun.dns_up_at)
        # Seconds from the session's start to each step (the benchmarks' cold start);
        # ready counts from the command's start; origin is time.monotonic() at the
        # session's start (the machine's clock: other processes line up with it).
        log.debug(
            "start-up timings",
            ready=round(elapsed, 3),
            origin=round(timings.origin, 4),
            **{k: round(v, 3) for k, v in steps.items()},
        )
        lines.append(
            f"Ready in {elapsed:.1f}s (pod Ready after "
            f"{timings.pod_ready:.1f}s, tunnel up after {timings.tunnel_up:.1f}s)"
        )
        return [*lines, READY_LINE]

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        made = self.tun.made
        problems = self.tun.down()
        undone = ["removed the TUN device, its routes and the resolver settings"] if made else []
        if self.server is not None:
            self.server.stop()
        for problem in problems:
            click.echo(f"Could not undo: {problem}", err=True)
        return undone


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["tun2socks", "socks"]),
    default="tun2socks",
    show_default=True,
    help="tun2socks: a TUN device, routes for the cluster's ranges and cluster DNS (root). "
    "socks: a SOCKS5 proxy only; no root, no change to this machine.",
)
@click.option(
    "--socks-port",
    cls=params.AliasedOption,
    hidden_aliases=("--proxyPort",),
    type=params.PORT,
    default=None,
    help="Port of the SOCKS5 proxy on 127.0.0.1. socks mode: [default: 2223]; "
    "tun2socks mode: only when given (or set as socks-port).",
)
@click.option(
    "--include-cidr",
    cls=params.AliasedOption,
    hidden_aliases=("--includeIps",),
    type=params.CIDR,
    multiple=True,
    help="Route this range too (repeatable).",
)
@click.option(
    "--exclude-cidr",
    cls=params.AliasedOption,
    hidden_aliases=("--excludeIps",),
    type=params.CIDR,
    multiple=True,
    help="Never route this range (repeatable).",
)
@click.option(
    "--force-routes",
    is_flag=True,
    help="Route a cluster range even where it overlaps a route this machine already has "
    "(a VPN's); by default such a range is skipped with a warning.",
)
@click.option(
    "--dns-namespace",
    type=params.NAME,
    multiple=True,
    help="Resolve svc.NS names for this namespace too, when you may not list namespaces.",
)
@click.option(
    "--mtu", type=params.NumberType(1280, 65535), default=None, help="TUN device MTU (1280-65535)."
)
@click.option("--print-pac", is_flag=True, help="Print a proxy auto-config file for browsers.")
@click.option("--print-env", is_flag=True, help="Print proxy environment variables for shells.")
@click.pass_context
def connect(
    ctx: click.Context,
    mode: str,
    socks_port: int | None,
    include_cidr: tuple[IPNetwork, ...],
    exclude_cidr: tuple[IPNetwork, ...],
    force_routes: bool,
    dns_namespace: tuple[str, ...],
    mtu: int | None,
    print_pac: bool,
    print_env: bool,
) -> None:
    """Reach the cluster's pods, Services and names from this machine.

    \b
    sudo ktpy connect          (tun2socks, the default) routes the cluster's
        service and pod ranges through a TUN device and answers cluster names
        (svc, svc.ns, svc.ns.svc.cluster.local) with a local DNS server; every
        other name and route stays as it was. Everything is undone on exit;
        after a crash, 'sudo ktpy clean --local' undoes it.
    ktpy connect --mode socks  runs only a SOCKS5 proxy on 127.0.0.1, names
        resolved on the cluster side:
            curl --socks5-hostname 127.0.0.1:2223 http://nginx.default/
        It needs no root and changes nothing on this machine.
    Only TCP is carried (and DNS); UDP otherwise is not. Linux only: macOS and
    Windows are not supported yet.
    """
    settings = settings_of(ctx)
    port: int | None = socks_port or settings.socks_port
    asked = socks_port is not None or settings.source_of("socks_port") != BUILT_IN
    if mode == "tun2socks" and not asked:
        port = None  # no proxy for other programs unless asked for
        if print_pac or print_env:
            raise UsageProblem(
                "--print-pac and --print-env need a SOCKS5 port in tun2socks mode",
                hint="Add --socks-port 2223.",
            )
    started = time.monotonic()
    session_id = names.new_session_id()
    unprivileged: connect_tun.Unprivileged | None = None
    if mode == "tun2socks":
        connect_tun.preflight(settings)  # puts a killed session's host changes back first
        connect_tun.check_include(include_cidr, force=force_routes)
        # From here on this process is the invoking user; a root helper makes the
        # host changes (least privilege: ktpy/host/helper.py).
        unprivileged = connect_tun.give_up_root(settings, session_id)
        settings = unprivileged.settings
    elif line := heal.notice(settings.journal_dir):
        click.echo(f"Note: {line}", err=True)
    try:
        api = make_api(settings)
        api.server_time()  # unreachable or unauthorised: say so before anything changes
    except BaseException:
        if unprivileged is not None:
            unprivileged.helper.close()
        raise
    spec = ShadowSpec(
        role=Role.CONNECT,
        namespace=settings.namespace,
        pod_name=names.connect_shadow_name(),
        image=settings.image,
    )
    tun = (
        TunOptions(include_cidr, exclude_cidr, dns_namespace, force_routes, mtu)
        if mode == "tun2socks"
        else None
    )
    command = Connect(
        api, settings, port, tun, unprivileged, print_pac=print_pac, print_env=print_env
    )
    session = Session(api, settings, spec, session_id=session_id)
    lifecycle.run(session, command, started=started)
