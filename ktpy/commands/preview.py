"""`ktpy preview NAME`: publish a local service in the cluster as the Service NAME.

A shadow pod ``<NAME>-kt-<5>`` listens on each REMOTE port through an SSH
remote forward that reaches LOCAL on this machine; the Service NAME selects it.
The Service is created last, once the pod is Ready and every forward listens,
so no caller is ever sent to a pod that cannot answer, and deleted first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click

from ktpy import lifecycle, params, progress
from ktpy.cluster import labels, manifests, names, waits
from ktpy.cluster.api import AlreadyExists, ApiError, ClusterApi, Kind, NotFound
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import ShadowPort
from ktpy.commands.context import make_api, settings_of
from ktpy.errors import KtpyError, NameTaken, UsageProblem
from ktpy.net.inbound import Inbound, listening
from ktpy.session import Session, ShadowSpec

ROUTED_TIMEOUT = 15.0


def ready_line(name: str) -> str:
    return f"Now you can access your local service in cluster by name '{name}'"


def _service_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return names.check_preview_service_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def remote_ports(expose: tuple[params.PortMapping, ...]) -> dict[int, int]:
    """REMOTE (in the cluster) -> LOCAL, checked: numbers only (the shadow moves its own
    sshd and dnsmasq out of the way of any)."""
    ports: dict[int, int] = {}
    for mapping in expose:
        if not isinstance(mapping.remote, int):
            raise UsageProblem(
                f"--expose {mapping}: REMOTE must be a number here",
                hint="preview creates the Service, so there is no port name to refer to yet.",
            )
        ports[mapping.remote] = mapping.local
    return ports


def name_taken(existing: Mapping[str, Any], namespace: str, name: str) -> NameTaken:
    """The refusal for a Service NAME that exists, saying whose it is when ktpy made it."""
    meta = existing.get("metadata") or {}
    found = meta.get("labels") or {}
    if found.get(labels.MANAGED_BY) != labels.MANAGED_BY_KTPY:
        return NameTaken(
            "service",
            name,
            namespace,
            hint="Choose another NAME: ktpy never replaces a Service it did not create.",
        )
    owner = (meta.get("annotations") or {}).get(labels.OWNER, "someone")
    role = found.get(labels.ROLE, "ktpy")
    return NameTaken(
        "service",
        name,
        namespace,
        detail=f"{role} session {found.get(labels.SESSION, '?')} of {owner}",
        hint="Choose another NAME; if that session is dead, 'ktpy status' shows it "
        "and 'ktpy clean' removes it.",
    )


def check_name_free(api: ClusterApi, namespace: str, name: str) -> None:
    try:
        existing = api.get(Kind.SERVICE, namespace, name)
    except NotFound:
        return
    raise name_taken(existing, namespace, name)


def _create_service(
    api: ClusterApi, session: Session, name: str, ports: tuple[ShadowPort, ...], external: bool
) -> Mapping[str, Any]:
    """The Service NAME selecting the shadow, adopted by the session: its heartbeat is
    refreshed with the pod's, and it is deleted first (newest first)."""
    namespace = session.spec.namespace
    body = manifests.preview_service(name, namespace, session.meta(), ports, external=external)
    try:
        return session.adopt(Kind.SERVICE, body)
    except AlreadyExists:
        # Someone took the name between the check and now.
        try:
            existing = api.get(Kind.SERVICE, namespace, name)
        except (ApiError, KtpyError):
            existing = {}
        raise name_taken(existing, namespace, name) from None


def wait_routed(api: ClusterApi, namespace: str, service: str, pod: str) -> bool:
    """Wait (by watch) until the Service's endpoints list the shadow pod as ready, so
    the ready line is not printed before the cluster can route to it."""
    try:
        with progress.waiting(f"Adding {pod} to the endpoints of service {service}"):
            return waits.wait_endpoints(
                api, namespace, service, lambda ready: pod in ready, timeout=ROUTED_TIMEOUT
            )
    except (ApiError, KtpyError):
        return False  # e.g. no right to list EndpointSlices: do not wait blind


class Preview(lifecycle.SessionCommand):
    def __init__(self, api: ClusterApi, name: str, ports: dict[int, int], external: bool) -> None:
        self.api = api
        self.name = name
        self.ports = ports
        self.external = external
        self.inbound = Inbound(ports)
        self.service: Mapping[str, Any] = {}

    def start(self, session: Session) -> None:
        for remote in self.ports:
            session.add_remote_forward(remote, self.inbound)
        shadow_ports = tuple(ShadowPort(remote) for remote in self.ports)
        self.service = _create_service(self.api, session, self.name, shadow_ports, self.external)
        spec = session.spec
        if not wait_routed(self.api, spec.namespace, self.name, spec.pod_name):
            click.echo(
                f"Warning: the endpoints of service {self.name} do not list {spec.pod_name} yet",
                err=True,
            )

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        namespace = session.spec.namespace
        lines = [
            f"Forwarding {self.name}.{namespace}:{remote} to localhost:{local}"
            for remote, local in self.ports.items()
        ]
        service_spec = self.service.get("spec") or {}
        lines.append(
            f"Service {self.name} ({service_spec.get('type')}, "
            f"cluster IP {service_spec.get('clusterIP')})"
        )
        return [*lines, f"Ready in {elapsed:.1f}s", ready_line(self.name)]


@click.command()
@click.argument("name", callback=_service_name)
@click.option(
    "--expose",
    type=params.EXPOSE,
    required=True,
    help="The local port and the port in the cluster for it (PORT alone: the same number).",
)
@click.option("--external", is_flag=True, help="Make the Service a LoadBalancer.")
@click.pass_context
def preview(
    ctx: click.Context, name: str, expose: tuple[params.PortMapping, ...], external: bool
) -> None:
    """Publish a local service in the cluster as the Service NAME.

    \b
    Callers in the cluster, and other developers with ktpy connect, reach this
    machine's localhost:LOCAL at NAME.<namespace>:REMOTE:
        ktpy preview nginx-local --expose 3001:8080
    NAME must not exist yet. Ctrl-C removes the Service and the shadow pod.
    """
    settings = settings_of(ctx)
    started = time.monotonic()
    ports = remote_ports(expose)
    shadow_ports = tuple(ShadowPort(remote) for remote in ports)
    api = make_api(settings)
    check_name_free(api, settings.namespace, name)
    for remote, local in ports.items():
        if not listening(local):
            click.echo(
                f"Warning: nothing listens on localhost:{local} yet; connections to "
                f"{name}:{remote} are closed at once until something does.",
                err=True,
            )
    spec = ShadowSpec(
        role=Role.PREVIEW,
        namespace=settings.namespace,
        pod_name=names.preview_pod_name(name),
        image=settings.image,
        target=f"service/{name}",
        ports=shadow_ports,
    )
    command = Preview(api, name, ports, external)
    lifecycle.run(Session(api, settings, spec), command, started=started)
