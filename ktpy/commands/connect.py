"""`ktpy connect`: the cluster's pods, Services and names from this machine."""

from __future__ import annotations

import time

import click

from ktpy import params
from ktpy.cluster import names
from ktpy.cluster.labels import Role
from ktpy.commands import connect_tun
from ktpy.commands.common import Lifecycle, make_api, settings_of, shadow_line
from ktpy.commands.connect_tun import IPNetwork
from ktpy.errors import UsageProblem
from ktpy.host import heal
from ktpy.net.socks_server import SocksServer
from ktpy.session import Session, ShadowSpec

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
    type=params.PORT,
    default=None,
    help="Port of the SOCKS5 proxy on 127.0.0.1 (both modes).  [default: 2223]",
)
@click.option(
    "--include-cidr",
    type=params.CIDR,
    multiple=True,
    help="Route this range too (repeatable).",
)
@click.option(
    "--exclude-cidr",
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
    multiple=True,
    help="Resolve svc.NS names for this namespace too, when you may not list namespaces.",
)
@click.option("--mtu", type=click.IntRange(1280, 65535), default=None, help="TUN device MTU.")
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
    port = socks_port or settings.socks_port
    started = time.monotonic()
    if mode == "tun2socks":
        connect_tun.preflight(settings)  # puts a killed session's host changes back first
    elif line := heal.notice(settings.journal_dir):
        click.echo(f"Note: {line}", err=True)
    api = make_api(settings)
    api.server_time()  # unreachable or unauthorised: say so before anything changes
    spec = ShadowSpec(
        role=Role.CONNECT,
        namespace=settings.namespace,
        pod_name=names.connect_shadow_name(),
        image=settings.image,
    )
    lifecycle = Lifecycle()
    tun = connect_tun.TunConnection()
    with lifecycle.installed():
        session = Session(api, settings, spec)
        try:
            server = _listen(session, port)
            session.start()
            server.start()
            if mode == "tun2socks":
                tun.up(
                    api,
                    settings,
                    session,
                    include=include_cidr,
                    exclude=exclude_cidr,
                    dns_namespaces=dns_namespace,
                    force_routes=force_routes,
                    mtu=mtu,
                    socks_address=server.address,
                )
        except BaseException:
            tun.down()
            session.close(hurry=True)
            raise
        lifecycle.running()
        try:
            host, bound = server.address
            click.echo(shadow_line(session))
            connect_tun.show(tun.lines)
            click.echo(f"SOCKS5 proxy on {host}:{bound}")
            if print_pac:
                click.echo(pac_file(host, bound))
            if print_env:
                click.echo(proxy_environment(host, bound))
            timings = session.timings
            click.echo(
                f"Ready in {time.monotonic() - started:.1f}s (pod Ready after "
                f"{timings.pod_ready:.1f}s, tunnel up after {timings.tunnel_up:.1f}s)"
            )
            click.echo(READY_LINE)
            lifecycle.wait(session.lost, lambda: session.lost_reason)
        finally:
            problems = tun.down()
            server.stop()
            session.close(hurry=lifecycle.hurry)
            for problem in problems:
                click.echo(f"Could not undo: {problem}", err=True)
    raise lifecycle.stop_reason()
