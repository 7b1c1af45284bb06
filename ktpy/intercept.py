"""One Service's traffic taken by a session and given back, start to end.

exchange takes all of it (a shadow pod replaces the Service's pods); mesh,
next, takes the requests that carry a developer's header. Both are this
orchestration over the cluster modules: the lock (``cluster.lock``), the
redirect and its restore (``cluster.redirect``), the waits that prove each
step (``cluster.waits``) and the guard that keeps it in place
(``cluster.guard``).

Order of work, so that no caller of the Service meets a gap:

1. read and check everything (Service, selector, ports, named target ports,
   the lock, the Deployment in scale mode): a bad request changes nothing;
2. start the shadow pod and its tunnel, and ask its sshd for every remote
   forward (each is listening when the request returns);
3. only then switch the Service's selector to the shadow, in one conditional
   write that also takes the lock; in scale mode the Deployment then goes to 0
   and, once its pods are gone, the Service gets its own selector back (the
   shadow carries the pod template's labels);
4. on exit, restore first (the Deployment before the Service, as every sweep
   does), wait until the EndpointSlices point at the original pods and no new
   connection reaches the shadow, then delete the shadow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import click

from ktpy import progress
from ktpy.cluster import guard, inventory, labels, lock, mesh, modify, ports, redirect, waits
from ktpy.cluster.api import ClusterApi, Kind, NotFound
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import SessionView
from ktpy.cluster.lock import Decision
from ktpy.cluster.modify import FieldChange
from ktpy.cluster.ports import Forward
from ktpy.cluster.redirect import Mode
from ktpy.config import Settings
from ktpy.errors import AlreadyExchanged, KtpyError
from ktpy.logs import get_logger
from ktpy.net.inbound import Inbound, listening
from ktpy.params import PortMapping
from ktpy.session import Session, check_local_process, judge_holder

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
    unexposed: tuple[ports.ServicePortEntry, ...]
    deployment: str | None = None
    template_labels: dict[str, str] = field(default_factory=dict)


def named_ports(api: ClusterApi, namespace: str, selector: dict[str, str]) -> dict[str, int]:
    """Named container ports of the pods the Service selects, then of the Deployments
    whose pods it would select (all scaled to 0, say)."""
    pods = api.list_objects(Kind.POD, namespace, label_selector=labels.format_selector(selector))
    named = ports.named_container_ports(p.get("spec") or {} for p in pods.items)
    deployments = api.list_objects(Kind.DEPLOYMENT, namespace).items
    templates = [
        redirect.template_spec(d) for d in deployments if redirect.selects_pods_of(selector, d)
    ]
    for name, number in ports.named_container_ports(templates).items():
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
    body = inventory.get_service(api, namespace, service)
    redirect.check_selector(body)
    # A stale holder's switch is undone before the take-over: work from the original.
    selector = redirect.original_selector(body)
    entries = ports.service_ports(body)
    needs_names = any(isinstance(e.target, str) for e in entries)
    named = named_ports(api, namespace, selector) if needs_names else {}
    forwards = ports.plan_forwards(service, entries, mappings, named)
    deployment: JsonObject | None = None
    if mode is Mode.SCALE:
        deployments = api.list_objects(Kind.DEPLOYMENT, namespace).items
        deployment = redirect.backing_deployment(service, selector, deployments)
    now = api.server_time()
    sessions = inventory.namespace_sessions(api, namespace)
    for target in (body, deployment):
        if target is None:
            continue
        judgement = judge_holder(target, sessions, now=now, stale_after=settings.stale_after)
        if judgement.decision is Decision.HELD:
            raise _refusal(judgement, target, sessions, settings, now, service)
    return Request(
        namespace=namespace,
        service=service,
        mode=mode,
        selector=selector,
        forwards=forwards,
        unexposed=tuple(ports.unexposed_ports(entries, forwards)),
        deployment=str(deployment["metadata"]["name"]) if deployment else None,
        template_labels=redirect.template_labels(deployment) if deployment else {},
    )


def _refusal(
    judgement: lock.LockJudgement,
    body: JsonObject,
    sessions: list[SessionView],
    settings: Settings,
    now: datetime,
    service: str,
) -> AlreadyExchanged:
    """The one line for a held Service; for a mesh, its live members by name."""
    members = mesh.live_marks(
        body, sessions, now=now, stale_after=settings.stale_after, check_local=check_local_process
    )
    if not members:
        return judgement.refusal(service, now)
    who = ", ".join(f"{m.owner} (session {m.session}, {m.header})" for m in members)
    since = judgement.holder.since if judgement.holder and judgement.holder.since else now
    return AlreadyExchanged(service, who, max(now - since, timedelta(0)), "meshed")


class Intercept:
    """One Service's traffic taken to the session's shadow pod and given back."""

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
        self.guards: list[guard.Guard] = []
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
        def took_over(holder: lock.Holder) -> None:
            click.echo(
                f"Taking over {kind.value.lower()}/{name} from {holder.liveness.value} session "
                f"{holder.session} of {holder.owner}: restoring it first",
                err=True,
            )

        return lock.take(
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
        held = guard.Guard(
            self.api,
            kind,
            self.request.namespace,
            name,
            session_id=self.session.id,
            wanted=wanted,
            body=body,
        )
        held.start()
        self.guards.append(held)

    def _wait_endpoints(
        self, done: Callable[[frozenset[str]], bool], what: str, timeout: float = SWITCH_TIMEOUT
    ) -> None:
        with progress.waiting(
            f"Waiting for the endpoints of service {self.request.service} to {what}"
        ) as wait:
            switched = waits.wait_endpoints(
                self.api, self.request.namespace, self.request.service, done, timeout=timeout
            )
            wait.outcome = None if switched else "not in time; going on"
        if not switched:
            self.log.warning(
                "endpoints did not follow in time; going on", wanted=what, seconds=timeout
            )

    # --- in -------------------------------------------------------------------------------

    def switch_in(self) -> None:
        held = lock.lock_for(self.session.id, self.settings.owner, self.api.server_time())
        request = self.request
        if request.mode is Mode.SELECTOR:
            body = self._take(
                Kind.SERVICE,
                request.service,
                build=lambda current: redirect.switched_service(current, held),
                check=redirect.check_selector,
            )
            self.log.info("service switched to the shadow pod")
            self._wait_endpoints(
                lambda ready: redirect.only_shadow(ready, self.shadow), "reach the shadow"
            )
            self._settle()
            self._guard(
                Kind.SERVICE, request.service, body, redirect.selector_changes(self.session.id)
            )
            return
        assert request.deployment is not None
        # Callers first move to the shadow by the selector, as in selector mode, so none
        # meets a pod of the Deployment while it goes away; only then does the Service get
        # its own selector back, which the shadow matches with the template labels.
        self._take(
            Kind.SERVICE,
            request.service,
            build=lambda current: redirect.switched_service(current, held),
            check=redirect.check_selector,
        )
        self._wait_endpoints(
            lambda ready: redirect.only_shadow(ready, self.shadow), "reach the shadow"
        )
        self._settle()
        self.joined = True  # before the call: a signal may cut it short after it went through
        self.api.patch(
            Kind.POD, request.namespace, self.shadow, redirect.label_patch(request.template_labels)
        )
        deployment = self._take(
            Kind.DEPLOYMENT,
            request.deployment,
            build=lambda current: redirect.scaled_deployment(current, self.session.id),
        )
        self.log.info("deployment scaled to 0", deployment=request.deployment)
        self._guard(Kind.DEPLOYMENT, request.deployment, deployment, redirect.scale_changes())
        with progress.waiting(f"Scaling deployment {request.deployment} to 0") as wait:
            scaled = waits.wait_pods(
                self.api,
                request.namespace,
                request.selector,
                lambda serving: serving <= {self.shadow},
                timeout=SCALE_TIMEOUT,
            )
            wait.outcome = None if scaled else "not in time; going on"
        if not scaled:
            self.log.warning("the deployment's pods are still serving; going on")
        service = redirect.rewrite(
            self.api,
            Kind.SERVICE,
            request.namespace,
            request.service,
            self.session.id,
            lambda current: redirect.relocked_service(current, held),
        )
        self._guard(Kind.SERVICE, request.service, service, ())
        self._wait_endpoints(
            lambda ready: redirect.only_shadow(ready, self.shadow), "reach only the shadow"
        )
        self._settle()

    def _settle(self) -> None:
        """Until the first caller arrives through the shadow, or kube-proxy had time."""
        self.inbound.wait_arrival(time.monotonic(), PROXY_SETTLE)

    # --- out ------------------------------------------------------------------------------

    def lost_error(self) -> KtpyError | None:
        """Why a guard gave up its object (the lock lost, or a writer that won), if one did."""
        for held in self.guards:
            if held.lost.is_set():
                return held.error
        return None

    def switch_out(self, hurried: Callable[[], bool]) -> list[str]:
        """Restore (always, even in a hurry), then wait for traffic to leave the shadow.
        Returns what was restored, in words."""
        for held in self.guards:
            held.stop()
        request = self.request
        undone: list[str] = []

        moved = False
        if request.mode is Mode.SCALE and request.deployment is not None:
            restored = redirect.restore(
                self.api, Kind.DEPLOYMENT, request.namespace, request.deployment, self.session.id
            )
            if restored is not None:
                left = _say_left(restored, f"deployment {request.deployment}")
                said = (
                    f"restored deployment {request.deployment} to "
                    f"{waits.replicas_of(restored.body)} replica(s)"
                    if not left
                    else f"released deployment {request.deployment}"
                )
                click.echo(said[0].upper() + said[1:])
                undone.append(said)
                if not hurried():
                    waits.wait_deployment(
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
                        redirect.label_patch(request.template_labels, remove=True),
                    )
                moved = True
        restored = redirect.restore(
            self.api, Kind.SERVICE, request.namespace, request.service, self.session.id
        )
        left = _say_left(restored, f"service {request.service}") if restored else ()
        if restored is not None and request.mode is Mode.SELECTOR and not left:
            click.echo(f"Restored the selector of service {request.service}")
            undone.append(f"restored the selector of service {request.service}")
            moved = True
        elif restored is not None:
            undone.append(f"released service {request.service}")
            moved = moved or request.mode is Mode.SELECTOR
        if not moved or hurried():
            return undone
        # The pods the Service selects now: a selector someone else set is theirs.
        now_selecting = redirect.selector_of(restored.body) if restored else request.selector
        wait_back_to_pods(
            self.api,
            request.namespace,
            request.service,
            now_selecting,
            lambda ready, originals: redirect.back_to_original(ready, self.shadow, originals),
            hurried,
        )
        self._drain(hurried)
        return undone

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


def _say_left(restored: modify.Restored, what: str) -> tuple[modify.LeftField, ...]:
    """Say in one line which fields the restore left as someone else set them."""
    line = redirect.left_line(restored.left, what)
    if line is not None:
        click.echo(line, err=True)
    return restored.left


def wait_back_to_pods(
    api: ClusterApi,
    namespace: str,
    service: str,
    selector: dict[str, str],
    back: Callable[[frozenset[str], list[str]], bool],
    hurried: Callable[[], bool],
) -> None:
    """After a restore: wait until the Service's ready endpoints are back on the pods
    ``selector`` picks (``back(ready, those pods)``), saying so while it lasts."""
    originals = waits.ready_pods(api, namespace, selector)
    with progress.waiting(f"Switching the endpoints of service {service} back to its pods"):
        waits.wait_endpoints(
            api,
            namespace,
            service,
            lambda ready: back(ready, originals),
            timeout=SWITCH_TIMEOUT,
            stop=hurried,
        )


def warn_local_ports(forwards: tuple[Forward, ...]) -> None:
    for forward in forwards:
        if not listening(forward.local):
            click.echo(
                f"Warning: nothing listens on local port {forward.local} yet; until something "
                f"does, callers of service port {forward.service_port} get their connection "
                "closed at once.",
                err=True,
            )


def describe(request: Request) -> list[str]:
    lines = [f"Forwarding {f.describe()}" for f in request.forwards]
    lines += [
        f"Note: service port {entry.describe()} is not exposed; its callers are "
        "refused while exchanged"
        for entry in request.unexposed
    ]
    return lines
