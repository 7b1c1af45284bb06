"""`ktpy forward`: local ports to Services, through a shadow pod of the session's own.

Each connection is made by the shadow pod to the Service's ClusterIP, so
kube-proxy picks a ready endpoint every time and replaced pods are followed
(``kubectl port-forward svc/x`` binds one pod and dies with it).
"""

from __future__ import annotations

import time

import click

from ktpy import params
from ktpy.cluster import names, service_target
from ktpy.cluster.api import ClusterApi, Kind, NotFound
from ktpy.cluster.labels import Role
from ktpy.cluster.service_target import ServiceRoute
from ktpy.commands.common import Lifecycle, make_api, settings_of
from ktpy.errors import ServiceNotFound, UsageProblem
from ktpy.net.forwarding import ForwardServer
from ktpy.session import Session, ShadowSpec

READY_LINE = "All looks good, now you can access the forwarded services on 127.0.0.1"


def resolve(
    api: ClusterApi, targets: tuple[params.ForwardTarget, ...], default_namespace: str
) -> list[ServiceRoute]:
    """Every target against its real Service, before anything is created."""
    routes: list[ServiceRoute] = []
    for target in targets:
        namespace = target.namespace or default_namespace
        try:
            service = api.get(Kind.SERVICE, namespace, target.service)
        except NotFound:
            raise ServiceNotFound(target.service, namespace) from None
        routes.append(service_target.route(service, target.remote, target.local))
    duplicates = service_target.duplicate_local_ports(routes)
    if duplicates:
        raise UsageProblem(
            f"local port {duplicates[0]} is used by two forwards",
            hint="Give each one its own LOCAL, e.g. 'ktpy forward a 8080 b 8081'.",
        )
    return routes


def _target(route: ServiceRoute, namespace: str) -> str:
    where = "" if route.namespace == namespace else f"{route.namespace}/"
    return f"service/{where}{route.service}"


def _listen(session: Session, route: ServiceRoute) -> ForwardServer:
    # Bound before anything is created in the cluster: a busy port fails first.
    try:
        return ForwardServer(
            session.open_flow,
            route.host,
            route.target_port,
            listen_port=route.local,
            name=f"forward-{route.local}",
        )
    except OSError as exc:
        raise UsageProblem(
            f"cannot listen on 127.0.0.1:{route.local}: {exc.strerror}",
            hint="Pick another LOCAL port (SVC LOCAL:REMOTE), or stop what uses this one.",
        ) from exc


@click.command()
@click.argument(
    "targets",
    nargs=-1,
    required=True,
    metavar="SVC [LOCAL[:REMOTE]] [SVC2 [LOCAL[:REMOTE]]]...",
    callback=params.forward_targets_callback,
)
@click.pass_context
def forward(ctx: click.Context, targets: tuple[params.ForwardTarget, ...]) -> None:
    """Forward local ports to Services, following their pods as they are replaced.

    \b
    REMOTE is a port number or name of the Service (default: its first TCP
    port); LOCAL defaults to the same number. SVC.NAMESPACE reaches another
    namespace. Listens on 127.0.0.1 only; needs no root.
        ktpy forward nginx 8080:80 redis 6379
    """
    settings = settings_of(ctx)
    started = time.monotonic()
    api = make_api(settings)
    routes = resolve(api, targets, settings.namespace)
    spec = ShadowSpec(
        role=Role.FORWARD,
        namespace=settings.namespace,
        pod_name=names.forward_shadow_name(),
        image=settings.image,
        target=",".join(dict.fromkeys(_target(r, settings.namespace) for r in routes)),
    )
    lifecycle = Lifecycle()
    with lifecycle.installed():
        session = Session(api, settings, spec)
        servers: list[ForwardServer] = []
        try:
            servers.extend(_listen(session, route) for route in routes)
            session.start()
            for server in servers:
                server.start()
        except BaseException:
            for server in servers:
                server.stop()
            session.close(hurry=True)
            raise
        lifecycle.running()
        try:
            click.echo(
                f"Shadow pod {spec.pod_name} in namespace {spec.namespace} (session {session.id})"
            )
            for route, server in zip(routes, servers, strict=True):
                host, port = server.address
                click.echo(f"Forwarding {host}:{port} to {route.label}")
            click.echo(f"Ready in {time.monotonic() - started:.1f}s")
            click.echo(READY_LINE)
            lifecycle.wait(session.lost, lambda: session.lost_reason)
        finally:
            for server in servers:
                server.stop()
            session.close(hurry=lifecycle.hurry)
    raise lifecycle.stop_reason()
