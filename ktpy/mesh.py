"""A developer's share of a Service's traffic, chosen by a request header.

Joining: this session's mesh Service ``<svc>-kt-mesh-<value>`` (selecting its
shadow pod, whose remote forwards reach the laptop) is created first; then the
Service's mesh is joined, or made if there is none: ``<svc>-kt-stuntman`` with
the original selector, the router's Secret and Deployment, and only once the
router serves, the Service switched to the router in one conditional write
that takes the lock for the mesh. The member then marks the Service (its
header value, taken by nobody live), adds its key and route to the router's
Secret (what a restarted router reads), and adds the route through HAProxy's
runtime API (no reload), reached over the router's own sshd with this
session's key: no ``pods/exec``, and no private key leaves the laptop.

Leaving: the route, the Secret's entries and the mark go; the last member out
puts the Service back, waits until its pods get the traffic again, and sweeps
the mesh's objects. A dead member's leftovers are swept by ``clean``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import click
import paramiko

from ktpy import progress
from ktpy.cluster import (
    guard,
    inventory,
    lock,
    manifests,
    mesh,
    modify,
    names,
    policies,
    ports,
    redirect,
    router,
    sweep,
    waits,
)
from ktpy.cluster.api import (
    AlreadyExists,
    ApiError,
    ClusterApi,
    Conflict,
    Kind,
    NotFound,
    wait_until,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.labels import Role
from ktpy.cluster.lock import Decision
from ktpy.cluster.modify import WRITE_ATTEMPTS
from ktpy.cluster.ports import Forward
from ktpy.config import Settings
from ktpy.errors import AlreadyExchanged, KtpyError, NameTaken, UsageProblem
from ktpy.intercept import PROXY_SETTLE, SWITCH_TIMEOUT, named_ports, wait_back_to_pods
from ktpy.logs import get_logger
from ktpy.net.inbound import Inbound
from ktpy.params import PortMapping, VersionMark
from ktpy.session import Session, check_local_process, judge_holder
from ktpy.tunnel import keys, portforward, ssh

ROUTER_READY_TIMEOUT = 90.0  # a new router pod: scheduled, image present, sshd and HAProxy up
# The kubelet rewrites a Secret volume on its next sync of the pod; the nudge (a pod
# annotation) makes that sync come at once, so a new key works within seconds.
KEY_WAIT_TIMEOUT = 60.0
ADMIN_TIMEOUT = 10.0
VALUE_LENGTH = 5
MESH_CONTESTED_HINT = (
    "Pause that writer's sync of the Service while you mesh it (Argo CD: turn off self-heal; "
    "Flux: suspend it), or use 'ktpy mesh --mode manual' with a mesh that routes by label."
)


@dataclass(frozen=True)
class MeshRequest:
    """Everything checked before anything changes."""

    namespace: str
    service: str
    key: str
    value: str
    selector: dict[str, str]
    entries: tuple[ports.ServicePortEntry, ...]
    forwards: tuple[Forward, ...]
    unexposed: tuple[ports.ServicePortEntry, ...]
    named: dict[str, int]

    @property
    def header(self) -> str:
        return f"{self.key.upper()}: {self.value}"


def check_mesh_request(
    api: ClusterApi,
    settings: Settings,
    service: str,
    mappings: tuple[PortMapping, ...],
    mark: VersionMark,
    *,
    manual: bool = False,
) -> MeshRequest:
    """Read and judge; raise the one-line error of the first problem. Changes nothing."""
    namespace = settings.namespace
    value = mark.value or names.random_suffix(length=VALUE_LENGTH)
    try:
        names.mesh_name(service, value)
    except ValueError as exc:
        raise UsageProblem(
            f"--version-mark {mark.key}:{value}: {exc}",
            hint="Use lowercase letters, digits and inner '-' (at most 20 characters).",
        ) from None
    body = inventory.get_service(api, namespace, service)
    selector = redirect.original_selector(body)
    if not selector:
        redirect.check_selector(body)
    entries = ports.service_ports(body)
    needs_names = any(isinstance(e.target, str) for e in entries)
    named = named_ports(api, namespace, selector) if needs_names else {}
    forwards = ports.plan_forwards(service, entries, mappings, named)
    now = api.server_time()
    sessions = inventory.namespace_sessions(api, namespace)
    holder = mesh.mesh_of(body)
    if not manual and holder is None and modify.is_modified(body):
        judgement = judge_holder(body, sessions, now=now, stale_after=settings.stale_after)
        if judgement.decision is Decision.HELD:
            raise judgement.refusal(service, now)
    if holder is not None:
        live = mesh.live_marks(
            body, sessions, now=now, stale_after=settings.stale_after,
            check_local=check_local_process,
        )  # fmt: skip
        check_value_free(service, namespace, live, mark.key, value)
    return MeshRequest(
        namespace=namespace,
        service=service,
        key=mark.key,
        value=value,
        selector=selector,
        entries=entries,
        forwards=forwards,
        unexposed=tuple(ports.unexposed_ports(entries, forwards)),
        named=named,
    )


def check_value_free(
    service: str, namespace: str, live: list[mesh.Mark], key: str, value: str, me: str = ""
) -> None:
    """Refuse a value a live member has, or a header key other than the mesh's."""
    for other in live:
        if other.session == me:
            continue
        if other.value == value:
            raise NameTaken(
                "version",
                value,
                namespace,
                detail=f"taken in the mesh of service {service} by session {other.session} "
                f"of {other.owner}",
                hint="Choose another --version-mark value.",
            )
        if other.key != key:
            raise UsageProblem(
                f"the mesh of service {service!r} routes by header {other.key!r}, not {key!r}",
                hint=f"Use --version-mark {other.key}:{value}.",
            )


class RouterAdmin:
    """HAProxy's runtime API in the router pod, over the router's sshd."""

    def __init__(
        self, api: ClusterApi, namespace: str, service: str, session: Session, ssh_port: int
    ) -> None:
        self.api = api
        self.ssh_port = ssh_port
        self.namespace = namespace
        self.service = service
        self.session = session
        self._transport: paramiko.Transport | None = None

    def _router_pod(self) -> str:
        listed = self.api.list_objects(
            Kind.POD,
            self.namespace,
            label_selector=",".join(
                f"{k}={v}" for k, v in sorted(router.router_selector(self.service).items())
            ),
        )
        ready = waits.serving_pods({str(p["metadata"]["name"]): p for p in listed.items})
        if not ready:
            raise ConnectionError(f"no router pod of service {self.service} is ready")
        return sorted(ready)[0]

    def connect(self, host_public: str, timeout: float = KEY_WAIT_TIMEOUT) -> None:
        """SSH to the router with this session's key; retried until the kubelet has
        written the key into the router's Secret volume."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pod = self._router_pod()
                target = portforward.Target(self.namespace, pod, self.ssh_port)
                stream = portforward.open_stream(self.api.open_websocket, target)
                credentials = ssh.SshCredentials(self.session.keys.client.pkey(), host_public)
                self._transport = ssh.connect(stream, credentials, where=f"pod/{pod}")
            except (ssh.SshError, portforward.PortForwardError, ConnectionError, ApiError) as exc:
                self.close()
                if time.monotonic() >= deadline:
                    raise KtpyError(
                        f"cannot reach the mesh router of service {self.service}: {exc}",
                        hint="See 'kubectl describe' and 'kubectl logs' of its router pod.",
                    ) from exc
                time.sleep(0.5)  # the next attempt is a new port-forward and login
            else:
                return

    def command(self, line: str) -> str:
        """One runtime API command; its answer."""
        if self._transport is None or not self._transport.is_active():
            raise ConnectionError("not connected to the router")
        channel = ssh.open_channel(self._transport, "127.0.0.1", router.ADMIN_PORT)
        try:
            channel.settimeout(ADMIN_TIMEOUT)
            channel.sendall(router.runtime_exchange(line))
            chunks: list[bytes] = []
            while data := channel.recv(65536):
                chunks.append(data)
            return router.parse_answer(b"".join(chunks))
        except router.RuntimeRefused as exc:
            raise KtpyError(f"the mesh router refused {line!r}: {exc}") from exc
        finally:
            channel.close()

    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_active()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()


class MeshMember:
    """This session in the mesh of one Service (auto mode)."""

    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        request: MeshRequest,
        session: Session,
        inbound: Inbound,
        say: Callable[[str], None] = lambda line: click.echo(line, err=True),
    ) -> None:
        self.api = api
        self.settings = settings
        self.request = request
        self.session = session
        self.inbound = inbound
        self.say = say
        self.mesh_id: str | None = None
        self.guard: guard.Guard | None = None
        self.marked = False
        self.routed = False
        self.names = router.router_names(request.service)
        self.router_ports = router.router_ports(request.service, request.entries, request.named)
        self.admin = RouterAdmin(
            api,
            request.namespace,
            request.service,
            session,
            router.router_ssh_port(self.router_ports),
        )
        self.log = get_logger(
            "ktpy.mesh", session=session.id, service=request.service, value=request.value
        )

    # --- in ---------------------------------------------------------------------------------

    def join(self) -> None:
        request = self.request
        mesh_service = self._create_mesh_service()
        address = str(mesh_service["spec"]["clusterIP"])
        with progress.waiting(f"Adding the shadow to service {mesh_service['metadata']['name']}"):
            listed = waits.wait_endpoints(
                self.api,
                request.namespace,
                str(mesh_service["metadata"]["name"]),
                lambda ready: self.session.spec.pod_name in ready,
                timeout=SWITCH_TIMEOUT,
            )
        if not listed:
            self.log.warning("the mesh Service does not list the shadow yet; going on")
        self.mesh_id = self._mesh()
        self._guard(self.mesh_id)
        for kind, name in (
            (Kind.DEPLOYMENT, self.names.deployment),
            (Kind.SECRET, self.names.secret),
            (Kind.SERVICE, self.names.stuntman),
        ):
            self.session.objects.share(kind, request.namespace, name)
        self._mark()
        host_public = self._update_secret(add=(request.value, address))
        self._nudge_router()
        self.admin.connect(host_public)
        self.admin.command(router.add_route(request.value, address))
        self.routed = True
        routes = router.parse_map(self.admin.command(router.show_map()))
        if routes.get(request.value) != address:
            raise KtpyError(f"the router did not take the route {request.header}: {routes}")
        self.log.info("route added", address=address)

    def _guard(self, mesh_id: str) -> None:
        """Keep the Service on the router while this member is in the mesh (each live
        member guards it; a writer that keeps setting it back wins, as for exchange)."""
        request = self.request
        self.guard = guard.Guard(
            self.api,
            Kind.SERVICE,
            request.namespace,
            request.service,
            session_id=mesh_id,
            wanted=mesh.mesh_changes(request.service),
            body=self.api.get(Kind.SERVICE, request.namespace, request.service),
            hint=MESH_CONTESTED_HINT,
        )
        self.guard.start()

    def lost_error(self) -> KtpyError | None:
        """Why the guard gave the Service up (the mesh restored or taken over, or a
        writer that won), if it did."""
        if self.guard is not None and self.guard.lost.is_set():
            return self.guard.error
        return None

    def _create_mesh_service(self) -> JsonObject:
        request = self.request
        specs = tuple(
            manifests.ServicePortSpec(
                port=e.port, target_port=e.target, name=e.name, app_protocol=e.app_protocol
            )
            for e in request.entries
            if e.protocol == "TCP"
        )
        body = manifests.mesh_service(
            request.service, request.value, request.namespace, self.session.meta(), specs
        )
        try:
            return self.session.adopt(Kind.SERVICE, body)
        except AlreadyExists:
            raise NameTaken(
                "service",
                names.mesh_name(request.service, request.value),
                request.namespace,
                detail="another session uses this version value",
                hint="Choose another --version-mark value, or 'ktpy clean' a dead session.",
            ) from None

    def _mesh(self) -> str:
        """The id of the live mesh holding the Service, made first if there is none."""
        request = self.request
        for _ in range(WRITE_ATTEMPTS):
            body = inventory.get_service(self.api, request.namespace, request.service)
            now = self.api.server_time()
            sessions = inventory.namespace_sessions(self.api, request.namespace)
            if modify.is_modified(body):
                judgement = judge_holder(
                    body, sessions, now=now, stale_after=self.settings.stale_after
                )
                holder = mesh.mesh_of(body)
                if judgement.decision is Decision.HELD:
                    if holder is None:
                        raise judgement.refusal(request.service, now)
                    return holder
                assert judgement.holder is not None
                self.say(
                    f"Taking over service {request.service} from {judgement.holder.liveness.value} "
                    f"session {judgement.holder.session} of {judgement.holder.owner}: "
                    "restoring it first"
                )
                sweep.release(self.api, request.namespace, judgement.holder.session, also=body)
                continue
            mesh_id = names.new_session_id()
            try:
                self._make_mesh(mesh_id, body)
            except AlreadyExists:
                # Another developer is making the mesh right now: join theirs.
                wait_until(
                    self.api,
                    Kind.SERVICE,
                    request.namespace,
                    lambda found: mesh.mesh_of(found.get(request.service) or {}) is not None,
                    timeout=ROUTER_READY_TIMEOUT,
                    field_selector=f"metadata.name={request.service}",
                )
                continue
            held = mesh.mesh_lock(mesh_id, self.settings.owner, now)
            try:
                lock.take(
                    self.api,
                    Kind.SERVICE,
                    request.namespace,
                    request.service,
                    build=functools.partial(mesh.meshed_service, lock=held),
                    check=redirect.check_selector,
                    session_id=mesh_id,
                    stale_after=self.settings.stale_after,
                    check_local=check_local_process,
                )
            except AlreadyExchanged:
                sweep.release(self.api, request.namespace, mesh_id)
                raise
            self._wait_router_serves()
            return mesh_id
        raise KtpyError(f"service {request.service!r} keeps changing; could not join its mesh")

    def _make_mesh(self, mesh_id: str, service: JsonObject) -> None:
        """Stuntman, router Secret and Deployment; returns once the router serves."""
        request = self.request
        meta = manifests.SessionMeta(
            session_id=mesh_id,
            role=Role.STUNTMAN,
            owner=self.settings.owner,
            heartbeat=self.api.server_time(),
            target=f"service/{request.service}",
        )
        stuntman = self.api.create(
            Kind.SERVICE,
            request.namespace,
            router.stuntman_service(self.names.stuntman, request.namespace, service, meta),
        )
        host = keys.generate_key_pair(f"ktpy-router-{mesh_id}")
        router_ports = self.router_ports
        router_meta = manifests.SessionMeta(
            session_id=mesh_id,
            role=Role.ROUTER,
            owner=self.settings.owner,
            heartbeat=meta.heartbeat,
            target=f"service/{request.service}",
        )
        config = router.haproxy_config(
            header=request.key,
            ports=router_ports,
            stuntman_ip=str(stuntman["spec"]["clusterIP"]),
        )
        self.api.create(
            Kind.SECRET,
            request.namespace,
            router.router_secret(
                self.names.secret,
                request.namespace,
                router_meta,
                authorized_keys=[self.session.keys.client.public],
                host_private_key=host.private_openssh,
                host_public_key=host.public,
                config=config,
                routes={},
            ),
        )
        deployment = self.api.create(
            Kind.DEPLOYMENT,
            request.namespace,
            router.router_deployment(
                self.names.deployment,
                request.namespace,
                image=self.settings.image,
                meta=router_meta,
                secret_name=self.names.secret,
                ports=router_ports,
                mesh_of=request.service,
                ssh_port=router.router_ssh_port(router_ports),
            ),
        )
        self.say(f"Mesh of service {request.service} made: router {self.names.deployment}")
        template = deployment["spec"]["template"]["metadata"]
        self.session.check_policies(
            f"{self.names.deployment}-*",
            template.get("labels") or {},
            policies.needs_for(Role.ROUTER, ((p.target_port, p.target_name) for p in router_ports)),
        )
        with progress.waiting(f"Starting the mesh router {self.names.deployment}"):
            ready = waits.wait_pods(
                self.api,
                request.namespace,
                router.router_selector(request.service),
                bool,
                timeout=ROUTER_READY_TIMEOUT,
            )
        if not ready:
            raise KtpyError(
                f"the mesh router of service {request.service} is not Ready after "
                f"{ROUTER_READY_TIMEOUT:.0f}s",
                hint=f"See 'kubectl describe deployment {self.names.deployment}'.",
            )

    def _wait_router_serves(self) -> None:
        """Until the Service's EndpointSlices list only router pods, and kube-proxy had time."""
        request = self.request
        routers = set(
            waits.ready_pods(self.api, request.namespace, router.router_selector(request.service))
        )
        with progress.waiting(
            f"Switching the endpoints of service {request.service} to the router"
        ):
            waits.wait_endpoints(
                self.api,
                request.namespace,
                request.service,
                lambda ready: bool(ready) and ready <= routers,
                timeout=SWITCH_TIMEOUT,
            )
            time.sleep(PROXY_SETTLE)  # kube-proxy's rules follow the EndpointSlices within this

    def _mark(self) -> None:
        """Mark the Service with this member's value, in one conditional write that
        also proves the mesh still holds it and nobody live has the value."""
        request = self.request
        for _ in range(WRITE_ATTEMPTS):
            body = inventory.get_service(self.api, request.namespace, request.service)
            if mesh.mesh_of(body) != self.mesh_id:
                raise KtpyError(
                    f"the mesh of service {request.service} went away while joining",
                    hint="Start again.",
                )
            now = self.api.server_time()
            live = mesh.live_marks(
                body,
                inventory.namespace_sessions(self.api, request.namespace),
                now=now,
                stale_after=self.settings.stale_after,
                check_local=check_local_process,
            )
            check_value_free(
                request.service, request.namespace, live, request.key, request.value,
                me=self.session.id,
            )  # fmt: skip
            try:
                self.api.replace(
                    Kind.SERVICE,
                    request.namespace,
                    request.service,
                    mesh.with_mark(body, self.mark(now)),
                )
            except Conflict:
                continue
            self.marked = True
            return
        raise KtpyError(f"service {request.service!r} keeps changing; could not mark it")

    def mark(self, now: datetime | None = None) -> mesh.Mark:
        moment = now if now is not None else self.api.server_time()
        return mesh.Mark(
            self.session.id, self.request.key, self.request.value, self.settings.owner, moment
        )

    def _update_secret(
        self, *, add: tuple[str, str] | None = None, remove: str | None = None
    ) -> str:
        """Add (value, address) and this session's key to the router's Secret, or
        remove them; returns the router's host public key."""
        request = self.request
        for _ in range(WRITE_ATTEMPTS):
            secret = self.api.get(Kind.SECRET, request.namespace, self.names.secret)
            updated = router.secret_with_member(
                secret,
                key=self.session.keys.client.public,
                route=add,
                remove=remove,
            )
            try:
                self.api.replace(Kind.SECRET, request.namespace, self.names.secret, updated)
            except Conflict:
                continue
            return router.host_public_key(updated)
        raise KtpyError(f"the router Secret of service {request.service} keeps changing")

    def _nudge_router(self) -> None:
        """A pod annotation change makes the kubelet sync the pod now, and with it the
        Secret volume (else it waits for its next periodic sync, up to a minute)."""
        listed = self.api.list_objects(
            Kind.POD,
            self.request.namespace,
            label_selector=",".join(
                f"{k}={v}" for k, v in sorted(router.router_selector(self.request.service).items())
            ),
        )
        for pod in listed.items:
            with contextlib.suppress(NotFound, Conflict):
                self.api.patch(
                    Kind.POD,
                    self.request.namespace,
                    str(pod["metadata"]["name"]),
                    {
                        "metadata": {
                            "annotations": {router.NUDGE: f"{self.session.id}-{time.time_ns()}"}
                        }
                    },
                )

    def beat(self) -> None:
        """With the session's heartbeat: the mark says this member lives, and the
        router's routes are made equal to its Secret's (a dead member's route that
        ``clean`` took out of the Secret goes from the running router too)."""
        if not self.marked:
            return
        with contextlib.suppress(NotFound):
            self.api.patch(
                Kind.SERVICE,
                self.request.namespace,
                self.request.service,
                mesh.mark_patch(self.mark()),
            )
        try:
            self.reconcile()
        except (OSError, ApiError, KtpyError, paramiko.SSHException) as exc:
            self.log.warning("could not compare the router's routes; will retry", reason=str(exc))

    def reconcile(self) -> None:
        secret = self.api.get(Kind.SECRET, self.request.namespace, self.names.secret)
        wanted = router.secret_routes(secret)
        if not self.admin.connected():
            self.admin.connect(router.host_public_key(secret), timeout=ADMIN_TIMEOUT)
        current = router.parse_map(self.admin.command(router.show_map()))
        for value in current.keys() - wanted.keys():
            self.admin.command(router.del_route(value))
            self.log.info("stale route removed from the router", value=value)
        for value, address in wanted.items():
            if current.get(value) != address:
                self.admin.command(router.add_route(value, address))

    # --- out --------------------------------------------------------------------------------

    def leave(self, hurried: Callable[[], bool]) -> list[str]:
        """Take this member's route, Secret entries and mark away; the last one out puts
        the Service back and sweeps the mesh. Returns what was undone, in words."""
        request = self.request
        undone: list[str] = []
        if self.guard is not None:
            self.guard.stop()  # the last one out restores: no re-assertion after that
        if self.routed:
            with contextlib.suppress(OSError, KtpyError, paramiko.SSHException):
                self.admin.command(router.del_route(request.value))
            self.routed = False
            undone.append(f"removed the route {request.header}")
        self.admin.close()
        if self.mesh_id is None:
            return undone
        with contextlib.suppress(NotFound):
            self._update_secret(remove=request.value)
        for kind, name in (
            (Kind.DEPLOYMENT, self.names.deployment),
            (Kind.SECRET, self.names.secret),
            (Kind.SERVICE, self.names.stuntman),
        ):
            self.session.objects.unshare(kind, request.namespace, name)
        last = self._unmark()
        if last:
            undone.append(f"restored the selector of service {request.service}")
            if not hurried():
                wait_back_to_pods(
                    self.api,
                    request.namespace,
                    request.service,
                    request.selector,
                    lambda ready, originals: bool(ready & set(originals)) or not originals,
                    hurried,
                )
                time.sleep(PROXY_SETTLE)  # kube-proxy follows the EndpointSlices
            sweep.release(self.api, request.namespace, self.mesh_id)
            undone.append("removed the mesh router and stuntman")
        return undone

    def _unmark(self) -> bool:
        """Remove this member's mark; if no other live member is left, restore the
        Service in the same conditional write. True if this was the last member."""
        request = self.request
        for _ in range(WRITE_ATTEMPTS):
            try:
                body = inventory.get_service(self.api, request.namespace, request.service)
            except KtpyError:
                return False
            if mesh.mesh_of(body) != self.mesh_id:
                return False  # restored by someone else (clean, recover)
            live = [
                m
                for m in mesh.live_marks(
                    body,
                    inventory.namespace_sessions(self.api, request.namespace),
                    now=self.api.server_time(),
                    stale_after=self.settings.stale_after,
                    check_local=check_local_process,
                )
                if m.session != self.session.id
            ]
            left: str | None = None
            if live:
                updated = mesh.without_mark(body, self.session.id)
            else:
                restored = redirect.restoration(body, self.mesh_id or "")
                if restored is None:
                    return False
                updated = restored.body
                left = redirect.left_line(restored.left, f"service {request.service}")
            try:
                self.api.replace(Kind.SERVICE, request.namespace, request.service, updated)
            except Conflict:
                continue
            self.marked = False
            if not live and left is not None:
                self.say(left)
            return not live
        raise KtpyError(f"service {request.service!r} keeps changing; could not leave its mesh")
