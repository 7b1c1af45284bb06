"""`ktpy exchange`: all of a Service's traffic to this machine, without dropping a request.

Order of work, so that no caller of the Service meets a gap:

1. read and check everything (Service, selector, ports, named target ports,
   the lock, the Deployment in scale mode): a bad request changes nothing;
2. start the shadow pod and its tunnel, and ask its sshd for every remote
   forward (each is listening when the request returns);
3. only then switch the Service's selector to the shadow, in one conditional
   write that also takes the lock; in scale mode the Deployment then goes to 0
   and, once its pods are gone, the Service gets its own selector back (the
   shadow carries the pod template's labels);
4. on exit, restore first, wait until the EndpointSlices point at the original
   pods and no new connection reaches the shadow, then delete the shadow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import click

from ktpy import params
from ktpy.cluster import exchange as plan
from ktpy.cluster import labels, names, switch
from ktpy.cluster.api import ApiError, ClusterApi, Kind, NotFound
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.exchange import Decision, Forward, Mode
from ktpy.cluster.labels import Role
from ktpy.cluster.modify import FieldChange
from ktpy.commands.common import Lifecycle, check_local_process, make_api, settings_of, shadow_line
from ktpy.config import Settings
from ktpy.errors import KtpyError, LockLost, SessionLost
from ktpy.logs import get_logger
from ktpy.net.inbound import Inbound, listening
from ktpy.params import PortMapping
from ktpy.session import Session, ShadowSpec

READY_LINE = "All looks good, now the service's traffic comes to this machine"
SWITCH_TIMEOUT = 30.0  # EndpointSlices follow a selector change within a second or two
SCALE_TIMEOUT = 120.0  # pods of a scaled-back Deployment may take a while to be Ready
DRAIN_QUIET = 1.0  # no new connection for this long: kube-proxy sends nothing more
DRAIN_TIMEOUT = 15.0  # longer connections are cut when the shadow goes
# kube-proxy programs a node's rules some time after the EndpointSlices change (its
# minimum sync period, 1 s by default): give it that long before calling a switch done.
PROXY_SETTLE = 2.0


@dataclass(frozen=True)
class Request:
    """Everything checked before anything changes."""

    namespace: str
    service: str
    mode: Mode
    selector: dict[str, str]
    forwards: tuple[Forward, ...]
    unexposed: tuple[plan.ServicePortEntry, ...]
    deployment: str | None = None
    template_labels: dict[str, str] = field(default_factory=dict)


def _named_ports(api: ClusterApi, namespace: str, selector: dict[str, str]) -> dict[str, int]:
    """Named container ports of the pods the Service selects, then of the Deployments
    whose pods it would select (all scaled to 0, say)."""
    pods = api.list_objects(Kind.POD, namespace, label_selector=labels.format_selector(selector))
    named = plan.named_container_ports(p.get("spec") or {} for p in pods.items)
    deployments = api.list_objects(Kind.DEPLOYMENT, namespace).items
    templates = [plan.template_spec(d) for d in deployments if plan.selects_pods_of(selector, d)]
    for name, number in plan.named_container_ports(templates).items():
        named.setdefault(name, number)
    return named


def check_request(
    api: ClusterApi,
    settings: Settings,
    service: str,
    mappings: tuple[PortMapping, ...],
    mode: Mode,
) -> Request:
    """Read and judge; raise the one-line error of the first problem. Changes nothing."""
    namespace = settings.namespace
    body = switch.get_service(api, namespace, service)
    plan.check_selector(body)
    # A stale holder's switch is undone before the take-over: work from the original.
    selector = plan.original_selector(body)
    entries = plan.service_ports(body)
    needs_names = any(isinstance(e.target, str) for e in entries)
    named = _named_ports(api, namespace, selector) if needs_names else {}
    forwards = plan.plan_forwards(service, entries, mappings, named)
    deployment: JsonObject | None = None
    if mode is Mode.SCALE:
        deployments = api.list_objects(Kind.DEPLOYMENT, namespace).items
        deployment = plan.backing_deployment(service, selector, deployments)
    now = api.server_time()
    for target in (body, deployment):
        if target is None:
            continue
        judgement = plan.judge_lock(
            target,
            switch.namespace_sessions(api, namespace),
            me="",
            now=now,
            stale_after=settings.stale_after,
            check_local=check_local_process,
        )
        if judgement.decision is Decision.HELD:
            raise judgement.refusal(service, now)
    return Request(
        namespace=namespace,
        service=service,
        mode=mode,
        selector=selector,
        forwards=forwards,
        unexposed=tuple(plan.unexposed_ports(entries, forwards)),
        deployment=str(deployment["metadata"]["name"]) if deployment else None,
        template_labels=plan.template_labels(deployment) if deployment else {},
    )


class Exchanger:
    """Switches the Service to the session's shadow pod and back."""

    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        request: Request,
        session: Session,
        inbound: Inbound,
    ) -> None:
        self.api = api
        self.settings = settings
        self.request = request
        self.session = session
        self.inbound = inbound
        self.guards: list[switch.Guard] = []
        self.joined = False  # scale mode: the shadow carries the Deployment's pod labels
        self.log = get_logger(
            "ktpy.exchange", session=session.id, service=request.service, mode=request.mode.value
        )

    @property
    def shadow(self) -> str:
        return self.session.spec.pod_name

    def _take(
        self,
        kind: Kind,
        name: str,
        build: Callable[[JsonObject], JsonObject],
        check: Callable[[JsonObject], object] | None = None,
    ) -> JsonObject:
        def took_over(holder: plan.Holder) -> None:
            click.echo(
                f"Taking over {kind.value.lower()}/{name} from {holder.liveness.value} session "
                f"{holder.session} of {holder.owner}: restoring it first",
                err=True,
            )

        return switch.take(
            self.api,
            kind,
            self.request.namespace,
            name,
            build=build,
            check=check or (lambda _: None),
            session_id=self.session.id,
            stale_after=self.settings.stale_after,
            check_local=check_local_process,
            on_takeover=took_over,
        )

    def _guard(
        self, kind: Kind, name: str, body: JsonObject, wanted: Sequence[FieldChange]
    ) -> None:
        guard = switch.Guard(
            self.api,
            kind,
            self.request.namespace,
            name,
            session_id=self.session.id,
            wanted=wanted,
            resource_version=str(body["metadata"].get("resourceVersion", "")),
        )
        guard.start()
        self.guards.append(guard)

    def _wait_endpoints(
        self, done: Callable[[frozenset[str]], bool], what: str, timeout: float = SWITCH_TIMEOUT
    ) -> None:
        if not switch.wait_endpoints(
            self.api, self.request.namespace, self.request.service, done, timeout=timeout
        ):
            self.log.warning(
                "endpoints did not follow in time; going on", wanted=what, seconds=timeout
            )

    # --- in -------------------------------------------------------------------------------

    def switch_in(self) -> None:
        lock = plan.lock_for(self.session.id, self.settings.owner, self.api.server_time())
        request = self.request
        if request.mode is Mode.SELECTOR:
            body = self._take(
                Kind.SERVICE,
                request.service,
                build=lambda current: plan.switched_service(current, lock),
                check=plan.check_selector,
            )
            self.log.info("service switched to the shadow pod")
            self._wait_endpoints(
                lambda ready: plan.only_shadow(ready, self.shadow), "reach the shadow"
            )
            self._settle()
            self._guard(Kind.SERVICE, request.service, body, plan.selector_changes(self.session.id))
            return
        assert request.deployment is not None
        # Callers first move to the shadow by the selector, as in selector mode, so none
        # meets a pod of the Deployment while it goes away; only then does the Service get
        # its own selector back, which the shadow matches with the template labels.
        self._take(
            Kind.SERVICE,
            request.service,
            build=lambda current: plan.switched_service(current, lock),
            check=plan.check_selector,
        )
        self._wait_endpoints(lambda ready: plan.only_shadow(ready, self.shadow), "reach the shadow")
        self._settle()
        self.joined = True  # before the call: a signal may cut it short after it went through
        self.api.patch(
            Kind.POD, request.namespace, self.shadow, plan.label_patch(request.template_labels)
        )
        deployment = self._take(
            Kind.DEPLOYMENT,
            request.deployment,
            build=lambda current: plan.scaled_deployment(current, self.session.id),
        )
        self.log.info("deployment scaled to 0", deployment=request.deployment)
        self._guard(Kind.DEPLOYMENT, request.deployment, deployment, plan.scale_changes())
        if not switch.wait_pods(
            self.api,
            request.namespace,
            request.selector,
            lambda serving: serving <= {self.shadow},
            timeout=SCALE_TIMEOUT,
        ):
            self.log.warning("the deployment's pods are still serving; going on")
        service = switch.rewrite(
            self.api,
            Kind.SERVICE,
            request.namespace,
            request.service,
            self.session.id,
            lambda current: plan.relocked_service(current, lock),
        )
        self._guard(Kind.SERVICE, request.service, service, ())
        self._wait_endpoints(
            lambda ready: plan.only_shadow(ready, self.shadow), "reach only the shadow"
        )
        self._settle()

    def _settle(self) -> None:
        """Until the first caller arrives through the shadow, or kube-proxy had time."""
        self.inbound.wait_arrival(time.monotonic(), PROXY_SETTLE)

    # --- out ------------------------------------------------------------------------------

    def lost_reason(self) -> str | None:
        for guard in self.guards:
            if guard.lost.is_set():
                return guard.reason
        return None

    def switch_out(self, lifecycle: Lifecycle) -> None:
        """Restore (always, even in a hurry), then wait for traffic to leave the shadow."""
        for guard in self.guards:
            guard.stop()
        request = self.request

        def hurried() -> bool:
            return lifecycle.hurry

        moved = False
        if request.mode is Mode.SCALE and request.deployment is not None:
            restored = switch.restore(
                self.api, Kind.DEPLOYMENT, request.namespace, request.deployment, self.session.id
            )
            if restored is not None:
                click.echo(
                    f"Restored deployment {request.deployment} to "
                    f"{plan.replicas_of(restored)} replica(s)"
                )
                if not hurried():
                    switch.wait_deployment(
                        self.api,
                        request.namespace,
                        request.deployment,
                        timeout=SCALE_TIMEOUT,
                        stop=hurried,
                    )
            if self.joined:
                # Leave the Service's pods before going away, so no new caller picks the shadow.
                with contextlib.suppress(NotFound):
                    self.api.patch(
                        Kind.POD,
                        request.namespace,
                        self.shadow,
                        plan.label_patch(request.template_labels, remove=True),
                    )
                moved = True
        restored = switch.restore(
            self.api, Kind.SERVICE, request.namespace, request.service, self.session.id
        )
        if restored is not None and request.mode is Mode.SELECTOR:
            click.echo(f"Restored the selector of service {request.service}")
            moved = True
        if not moved or hurried():
            return
        originals = switch.ready_pods(self.api, request.namespace, request.selector)
        switch.wait_endpoints(
            self.api,
            request.namespace,
            request.service,
            lambda ready: plan.back_to_original(ready, self.shadow, originals),
            timeout=SWITCH_TIMEOUT,
            stop=hurried,
        )
        self._drain(hurried)

    def _drain(self, hurried: Callable[[], bool]) -> None:
        """kube-proxy follows the EndpointSlices with a lag: keep forwarding until it
        had time to, no new connection has come for a moment, and the open ones are done."""
        inbound = self.inbound
        settled = time.monotonic() + PROXY_SETTLE
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and not hurried():
            quiet = inbound.wait_quiet(DRAIN_QUIET, timeout=0.25)
            if quiet and time.monotonic() >= settled:
                return
        stats = inbound.snapshot()
        if stats.active:
            self.log.warning("closing connections still open", open=stats.active)


def _warn_local_ports(forwards: tuple[Forward, ...]) -> None:
    for forward in forwards:
        if not listening(forward.local):
            click.echo(
                f"Warning: nothing listens on local port {forward.local} yet; until something "
                f"does, callers of service port {forward.service_port} get their connection "
                "closed at once.",
                err=True,
            )


def _describe(request: Request) -> list[str]:
    lines = [f"Forwarding {f.describe()}" for f in request.forwards]
    lines += [
        f"Note: service port {entry.describe()} is not exposed; its callers are "
        "refused while exchanged"
        for entry in request.unexposed
    ]
    return lines


@click.command()
@click.argument("service", type=params.NAME)
@click.option(
    "--expose",
    type=params.EXPOSE,
    default=None,
    metavar="LOCAL:REMOTE[,...]",
    help="Local ports for the Service's ports (see above).  "
    "[default: each target port to the same local port]",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.SELECTOR.value,
    show_default=True,
    help="selector: the Service selects a shadow pod; "
    "scale: the shadow joins the Deployment's pods, the Deployment goes to 0.",
)
@click.pass_context
def exchange(
    ctx: click.Context, service: str, expose: tuple[PortMapping, ...] | None, mode: str
) -> None:
    """Send all of SERVICE's traffic to this machine until Ctrl-C.

    \b
    --expose LOCAL:REMOTE[,LOCAL:REMOTE...], or a bare PORT for PORT:PORT.
    REMOTE is one of the Service's ports (number or name) or a target port
    (number, or the container port name the Service targets); where a number
    is one entry's port and another's target port, the Service port wins.
    Without --expose each TCP target port goes to the same local port number.
    Connections reach LOCAL on 127.0.0.1, else ::1; if nothing listens there,
    the caller's connection is closed at once.

    \b
    The switch happens only once the shadow pod is Ready and every forward
    listens; on exit the Service is put back first and the shadow removed
    once the original pods get the traffic again. After a crash:
    'ktpy recover SERVICE', or 'ktpy clean' once the session is stale.
    """
    settings = settings_of(ctx)
    started = time.monotonic()
    api = make_api(settings)
    request = check_request(api, settings, service, expose or (), Mode(mode))
    _warn_local_ports(request.forwards)
    base = request.deployment if request.mode is Mode.SCALE and request.deployment else service
    spec = ShadowSpec(
        role=Role.EXCHANGE,
        namespace=request.namespace,
        pod_name=names.exchange_shadow_name(base),
        image=settings.image,
        target=f"service/{service}",
        ports=tuple(f.shadow for f in request.forwards),
    )
    lifecycle = Lifecycle()
    with lifecycle.installed():
        session = Session(api, settings, spec)
        inbound = Inbound({f.shadow_port: f.local for f in request.forwards})
        exchanger = Exchanger(api, settings, request, session, inbound)
        try:
            session.start()
            for forward in request.forwards:
                session.add_remote_forward(forward.shadow_port, inbound)
            exchanger.switch_in()
        except BaseException:
            _teardown(exchanger, session, lifecycle)
            raise
        lifecycle.running()
        try:
            click.echo(shadow_line(session))
            for line in _describe(request):
                click.echo(line)
            what = (
                f"deployment {request.deployment} scaled to 0"
                if request.mode is Mode.SCALE
                else f"service {service} selects the shadow pod"
            )
            click.echo(f"Exchanged: {what}; ready in {time.monotonic() - started:.1f}s")
            click.echo(READY_LINE)
            _wait(lifecycle, exchanger, session)
        finally:
            _teardown(exchanger, session, lifecycle)
    raise lifecycle.stop_reason()


def _wait(lifecycle: Lifecycle, exchanger: Exchanger, session: Session) -> None:
    while not lifecycle.stopping.wait(0.5):
        reason = exchanger.lost_reason()
        if reason is not None:
            raise LockLost(f"{reason}; this session stops")
        if session.lost.is_set():
            # A lock lost while the laptop slept also takes the pod: say the better reason.
            reason = exchanger.lost_reason()
            if reason is not None:
                raise LockLost(f"{reason}; this session stops")
            raise SessionLost(session.lost_reason)


def _teardown(exchanger: Exchanger, session: Session, lifecycle: Lifecycle) -> None:
    try:
        exchanger.switch_out(lifecycle)
    except (ApiError, KtpyError) as exc:
        click.echo(
            f"Could not restore service {exchanger.request.service}: {exc}; "
            f"run 'ktpy recover {exchanger.request.service}'",
            err=True,
        )
    finally:
        session.close(hurry=lifecycle.hurry)
