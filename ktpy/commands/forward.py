"""`ktpy forward`: local ports to Services, through a shadow pod of the session's own.

Each connection is made by the shadow pod to the Service's ClusterIP, so
kube-proxy picks a ready endpoint every time and replaced pods are followed
(``kubectl port-forward svc/x`` binds one pod and dies with it).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

import click

from ktpy import lifecycle, params
from ktpy.cluster import names, service_target
from ktpy.cluster.api import ClusterApi, Kind, NotFound
from ktpy.cluster.labels import Role
from ktpy.cluster.service_target import ServiceRoute
from ktpy.commands import completion
from ktpy.commands.context import make_api, settings_of
from ktpy.errors import ServiceNotFound, UsageProblem
from ktpy.net.forwarding import ForwardServer
from ktpy.net.relay import Flow, FlowOpener
from ktpy.session import Session, ShadowSpec
from ktpy.tunnel import ssh

READY_LINE = "All looks good, now you can access the forwarded services on 127.0.0.1"
# Per attempt: a Service connection normally opens in milliseconds; one that has not
# after this went to an endpoint that is gone (kube-proxy lags a rollout), and
# ForwardServer tries again. Far below a client's own timeout.
OPEN_TIMEOUT = 2.0


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


def flow_opener(session: Session, timeout: float = OPEN_TIMEOUT) -> FlowOpener:
    """session.open_flow with a short timeout, its failures told apart for retrying:
    ETIMEDOUT for no answer in time, ECONNABORTED for a tunnel that dropped meanwhile.

    If the shadow's connect answers after we gave up, paramiko keeps that channel
    unread until the session ends (it offers no way to cancel an open); rare, and
    bounded by the session.
    """

    def open_flow(host: str, port: int) -> Flow:
        transport = session.transport()
        started = time.monotonic()
        try:
            return ssh.open_channel(transport, host, port, timeout=timeout)
        except ConnectionError as exc:
            if isinstance(exc, ConnectionRefusedError):
                raise
            if not transport.is_active():
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, f"{host}:{port}: the tunnel dropped while opening"
                ) from exc
            if time.monotonic() - started >= timeout:
                raise TimeoutError(
                    errno.ETIMEDOUT, f"{host}:{port}: no answer within {timeout:g}s"
                ) from exc
            raise

    return open_flow


def _listen(session: Session, route: ServiceRoute) -> ForwardServer:
    # Bound before anything is created in the cluster: a busy port fails first.
    try:
        return ForwardServer(
            flow_opener(session),
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


class Forward(lifecycle.SessionCommand):
    def __init__(self, routes: list[ServiceRoute]) -> None:
        self.routes = routes
        self.servers: list[ForwardServer] = []

    def bind(self, session: Session) -> None:
        self.servers.extend(_listen(session, route) for route in self.routes)

    def start(self, session: Session) -> None:
        for server in self.servers:
            server.start()

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        lines = []
        for route, server in zip(self.routes, self.servers, strict=True):
            host, port = server.address
            lines.append(f"Forwarding {host}:{port} to {route.label}")
        return [*lines, f"Ready in {elapsed:.1f}s", READY_LINE]

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        for server in self.servers:
            server.stop()
        return [f"closed {len(self.servers)} local port(s)"] if self.servers else []


@click.command()
@click.argument(
    "targets",
    nargs=-1,
    required=True,
    metavar="SVC [LOCAL[:REMOTE]] [SVC2 [LOCAL[:REMOTE]]]...",
    callback=params.forward_targets_callback,
    shell_complete=completion.services,
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
    lifecycle.run(Session(api, settings, spec), Forward(routes), started=started)
