"""`ktpy preview NAME`: publish a local service in the cluster as the Service NAME.

A shadow pod ``<NAME>-kt-<5>`` listens on each REMOTE port through an SSH
remote forward that reaches LOCAL on this machine; the Service NAME selects it.
The Service is created last, once the pod is Ready and every forward listens,
so no caller is ever sent to a pod that cannot answer, and deleted first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import click

from ktpy import params
from ktpy.cluster import labels, manifests, names
from ktpy.cluster.api import AlreadyExists, ApiError, ClusterApi, Kind, NotFound
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import ShadowPort
from ktpy.commands.common import Lifecycle, make_api, settings_of, shadow_line
from ktpy.errors import KtpyError, NameTaken, UsageProblem
from ktpy.net.inbound import Inbound, listening
from ktpy.session import Created, Session, ShadowSpec, local_owner_identity

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
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
    spec = session.spec
    meta = manifests.SessionMeta(
        session_id=session.id,
        role=spec.role,
        owner=session.settings.owner,
        heartbeat=api.server_time(),
        pid_start=local_owner_identity(),
        target=spec.target,
    )
    body = manifests.preview_service(name, spec.namespace, meta, ports, external=external)
    try:
        created = api.create(Kind.SERVICE, spec.namespace, body)
    except AlreadyExists:
        # Someone took the name between the check and now.
        try:
            existing = api.get(Kind.SERVICE, spec.namespace, name)
        except (ApiError, KtpyError):
            existing = {}
        raise name_taken(existing, spec.namespace, name) from None
    # Heartbeat-refreshed with the pod, and deleted before it (newest first).
    session.created.append(
        Created(Kind.SERVICE, spec.namespace, name, str(created["metadata"]["uid"]))
    )
    return created


def routed_pods(slices: Iterable[Mapping[str, Any]]) -> set[str]:
    """Pods a Service's EndpointSlices call ready (a missing condition means ready)."""
    pods: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or ():
            ref = endpoint.get("targetRef") or {}
            if (endpoint.get("conditions") or {}).get("ready") is not False:
                pods.add(str(ref.get("name")))
    return pods


def wait_routed(api: ClusterApi, namespace: str, service: str, pod: str) -> bool:
    """Wait until the Service's endpoints list the shadow pod as ready, so the ready
    line is not printed before the cluster can route to it."""
    deadline = time.monotonic() + ROUTED_TIMEOUT
    while time.monotonic() < deadline:
        try:
            slices = api.list_objects(
                Kind.ENDPOINT_SLICE, namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
            ).items
        except (ApiError, KtpyError):
            return False  # e.g. no right to list EndpointSlices: do not wait blind
        if pod in routed_pods(slices):
            return True
        time.sleep(0.2)
    return False


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
    inbound = Inbound(ports)
    lifecycle = Lifecycle()
    with lifecycle.installed():
        session = Session(api, settings, spec)
        try:
            session.start()
            for remote in ports:
                session.add_remote_forward(remote, inbound)
            service = _create_service(api, session, name, shadow_ports, external)
            if not wait_routed(api, spec.namespace, name, spec.pod_name):
                click.echo(
                    f"Warning: the endpoints of service {name} do not list {spec.pod_name} yet",
                    err=True,
                )
        except BaseException:
            session.close(hurry=True)
            raise
        lifecycle.running()
        try:
            click.echo(shadow_line(session))
            for remote, local in ports.items():
                click.echo(f"Forwarding {name}.{spec.namespace}:{remote} to localhost:{local}")
            service_spec = service.get("spec") or {}
            click.echo(
                f"Service {name} ({service_spec.get('type')}, "
                f"cluster IP {service_spec.get('clusterIP')})"
            )
            click.echo(f"Ready in {time.monotonic() - started:.1f}s")
            click.echo(ready_line(name))
            lifecycle.wait(session.lost, lambda: session.lost_reason)
        finally:
            session.close(hurry=lifecycle.hurry)
    raise lifecycle.stop_reason()
