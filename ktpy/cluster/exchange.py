"""What ``ktpy exchange`` and ``ktpy recover`` decide, as pure functions over API bodies.

- Port mapping: which of a Service's ports each ``--expose LOCAL:REMOTE``
  means, which port the shadow pod listens on for it (a named target port is
  resolved through the backing pods' containerPort, and the shadow declares
  the same name), and the default when ``--expose`` is left out.
- The lock: who holds a Service (``ktpy.dev/lock`` or ``modified-by``), whether
  that session is live, stale or dead, and so whether to refuse, take over or
  go ahead.
- The bodies of the changes (selector switch, replicas to 0, lock only) and
  the guard's verdict on the Service as someone else left it.
- EndpointSlices: which pods a Service's traffic reaches now.

Nothing here talks to the API server; ``ktpy.cluster.switch`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ktpy.cluster import labels, manifests, modify
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import (
    Liveness,
    LocalProcessCheck,
    SessionView,
    no_local_check,
)
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.modify import FieldChange
from ktpy.errors import (
    AlreadyExchanged,
    NoSelector,
    PortNotInService,
    UnresolvedTargetPort,
    UsageProblem,
)
from ktpy.params import PortMapping

SELECTOR_PATH = ("spec", "selector")
REPLICAS_PATH = ("spec", "replicas")
LOCK_PATH = ("metadata", "annotations", labels.LOCK)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class Mode(StrEnum):
    SELECTOR = "selector"
    SCALE = "scale"


# --- ports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePortEntry:
    """One entry of a Service's ``spec.ports``."""

    port: int
    target: int | str
    name: str | None = None
    protocol: str = "TCP"

    def describe(self) -> str:
        named = f" ({self.name})" if self.name else ""
        return f"{self.port}{named} -> {self.target}"


def service_ports(service: Mapping[str, Any]) -> tuple[ServicePortEntry, ...]:
    entries: list[ServicePortEntry] = []
    for raw in (service.get("spec") or {}).get("ports") or ():
        port = int(raw["port"])
        target = raw.get("targetPort", port)
        entries.append(
            ServicePortEntry(
                port=port,
                # The API server may hand back a numeric target port as a string.
                target=int(target) if isinstance(target, int) or str(target).isdigit() else target,
                name=raw.get("name") or None,
                protocol=str(raw.get("protocol") or "TCP"),
            )
        )
    return tuple(entries)


def named_container_ports(pod_specs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Container port names -> numbers (TCP) across pod specs, first seen wins.

    ``pod_specs`` are pods' ``spec`` or Deployment templates' ``spec``.
    """
    named: dict[str, int] = {}
    for spec in pod_specs:
        for container in spec.get("containers") or ():
            for port in container.get("ports") or ():
                name = port.get("name")
                if name and str(port.get("protocol") or "TCP") == "TCP":
                    named.setdefault(str(name), int(port["containerPort"]))
    return named


@dataclass(frozen=True)
class Forward:
    """One exposed port: the shadow listens on ``shadow_port`` and hands each
    connection to ``local`` on this machine."""

    local: int
    shadow_port: int
    service_port: int
    service_port_name: str | None = None
    # The Service's named target port: the shadow declares its port under this name.
    target_name: str | None = None

    def describe(self) -> str:
        named = f" ({self.service_port_name})" if self.service_port_name else ""
        target = f"{self.target_name}={self.shadow_port}" if self.target_name else self.shadow_port
        return (
            f"service port {self.service_port}{named} -> shadow port {target} -> local {self.local}"
        )

    @property
    def shadow(self) -> manifests.ShadowPort:
        return manifests.ShadowPort(self.shadow_port, self.target_name)


def _target_number(entry: ServicePortEntry, named: Mapping[str, int]) -> int | None:
    if isinstance(entry.target, int):
        return entry.target
    return named.get(entry.target)


def _pick(
    service: str,
    remote: int | str,
    entries: Sequence[ServicePortEntry],
    named: Mapping[str, int],
) -> ServicePortEntry:
    """The entry REMOTE means. A Service port (number or name) wins over a target port."""
    if isinstance(remote, int):
        by_port = [e for e in entries if e.port == remote]
        by_target = [e for e in entries if _target_number(e, named) == remote]
    else:
        by_port = [e for e in entries if e.name == remote]
        by_target = [e for e in entries if e.target == remote]
    # Within one kind several TCP/UDP twins may share a number: take the TCP one.
    for found in (by_port, by_target):
        tcp = [e for e in found if e.protocol == "TCP"]
        if tcp:
            return tcp[0]
        if found:
            raise UsageProblem(
                f"port {remote} of service {service!r} is {found[0].protocol}; "
                "ktpy exchange carries TCP only",
                hint="Expose a TCP port of the Service.",
            )
    raise PortNotInService(service, remote, [e.describe() for e in entries])


def _forward(
    service: str, entry: ServicePortEntry, local: int, named: Mapping[str, int]
) -> Forward:
    number = _target_number(entry, named)
    if number is None:
        raise UnresolvedTargetPort(service, str(entry.target))
    target_name = entry.target if isinstance(entry.target, str) else None
    return Forward(local, number, entry.port, entry.name, target_name)


def plan_forwards(
    service: str,
    entries: Sequence[ServicePortEntry],
    mappings: Sequence[PortMapping],
    named: Mapping[str, int],
) -> tuple[Forward, ...]:
    """The forwards for ``--expose`` (or, if empty, every TCP target port to the same
    local port number). Raises the error a user should see for a bad request."""
    if not entries:
        raise PortNotInService(service, mappings[0].remote if mappings else "any", [])
    forwards: list[Forward] = []
    if mappings:
        for mapping in mappings:
            entry = _pick(service, mapping.remote, entries, named)
            forwards.append(_forward(service, entry, mapping.local, named))
    else:
        for entry in entries:
            if entry.protocol != "TCP":
                continue
            number = _target_number(entry, named)
            if number is None:
                raise UnresolvedTargetPort(service, str(entry.target))
            forwards.append(_forward(service, entry, number, named))
        if not forwards:
            raise UsageProblem(
                f"service {service!r} has no TCP port; ktpy exchange carries TCP only"
            )
    return _dedupe(service, forwards)


def _dedupe(service: str, forwards: Sequence[Forward]) -> tuple[Forward, ...]:
    """Two Service ports on one target port share the shadow's listener: fine if they go
    to the same local port, a contradiction otherwise."""
    by_shadow: dict[int, Forward] = {}
    for forward in forwards:
        seen = by_shadow.get(forward.shadow_port)
        if seen is None:
            by_shadow[forward.shadow_port] = forward
        elif seen.local != forward.local:
            raise UsageProblem(
                f"service ports {seen.service_port} and {forward.service_port} of {service!r} "
                f"both go to target port {forward.shadow_port}, which cannot be sent to both "
                f"local ports {seen.local} and {forward.local}",
                hint="Expose that target port once.",
            )
    return tuple(by_shadow.values())


def unexposed_ports(
    entries: Sequence[ServicePortEntry], forwards: Sequence[Forward]
) -> list[ServicePortEntry]:
    """Service ports whose callers will find nothing behind the shadow."""
    exposed = {f.service_port for f in forwards}
    shadow_ports = {f.shadow_port for f in forwards}
    return [
        e
        for e in entries
        if e.port not in exposed and not (isinstance(e.target, int) and e.target in shadow_ports)
    ]


def selector_of(service: Mapping[str, Any]) -> dict[str, str]:
    return dict((service.get("spec") or {}).get("selector") or {})


def original_selector(service: Mapping[str, Any]) -> dict[str, str]:
    """The Service's own selector: the recorded original if ktpy switched it."""
    with contextlib.suppress(ValueError):
        for change in modify.recorded_originals(service):
            if change.path == SELECTOR_PATH and isinstance(change.value, dict):
                return dict(change.value)
    return selector_of(service)


def check_selector(service: Mapping[str, Any]) -> dict[str, str]:
    """The Service's selector, or NoSelector: hand-made endpoints cannot be switched."""
    selector = selector_of(service)
    if not selector:
        raise NoSelector(str(service["metadata"]["name"]))
    return selector


# --- the lock ---------------------------------------------------------------------------------


class Decision(StrEnum):
    FREE = "free"  # nobody holds it
    MINE = "mine"  # this very session holds it (an earlier write went through)
    HELD = "held"  # a live session holds it: refuse
    STALE = "stale"  # a stale or dead session holds it: restore, then take over


@dataclass(frozen=True)
class Holder:
    session: str | None
    owner: str
    since: datetime | None
    role: Role
    liveness: Liveness


@dataclass(frozen=True)
class LockJudgement:
    decision: Decision
    holder: Holder | None = None

    def refusal(self, service: str, now: datetime) -> AlreadyExchanged:
        assert self.holder is not None, "only a held lock is refused"
        holder = self.holder
        age = now - holder.since if holder.since is not None else timedelta(0)
        owner = holder.owner
        if holder.session:
            owner = f"{owner}, session {holder.session}"
        role = "meshed" if holder.role is Role.MESH else "exchanged"
        return AlreadyExchanged(service, owner, max(age, timedelta(0)), role)


def judge_lock(
    body: Mapping[str, Any],
    sessions: Iterable[SessionView],
    *,
    me: str,
    now: datetime,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
) -> LockJudgement:
    """Who holds ``body`` (a Service or Deployment), and what this session may do.

    ``sessions`` are the sessions of the object's namespace, from the objects ktpy
    created, listed AFTER ``body`` was read (a session creates its pod before it
    modifies anything, so a live holder always has its pod in the list). A holder
    with no objects at all is an orphan: stale.
    """
    if not modify.is_modified(body):
        return LockJudgement(Decision.FREE)
    session = modify.modifier_session(body)
    if session == me:
        return LockJudgement(Decision.MINE)
    lock = modify.lock_of(body)
    namespace = str((body.get("metadata") or {}).get("namespace", ""))
    view = next((v for v in sessions if v.session_id == session and v.namespace == namespace), None)
    liveness = Liveness.STALE if view is None else view.liveness(now, stale_after, check_local)
    owner = (lock.owner if lock else None) or (view.owner if view else None) or "an unknown user"
    since = lock.since if lock else (view.created if view else None)
    role = lock.role if lock else (view.role if view and view.role else Role.EXCHANGE)
    holder = Holder(session, owner, since, role, liveness)
    if liveness is Liveness.LIVE:
        return LockJudgement(Decision.HELD, holder)
    return LockJudgement(Decision.STALE, holder)


# --- the changes ------------------------------------------------------------------------------


def exchange_selector(session_id: str) -> dict[str, str]:
    return labels.shadow_selector(session_id, Role.EXCHANGE)


def selector_changes(session_id: str) -> tuple[FieldChange, ...]:
    return (FieldChange(SELECTOR_PATH, exchange_selector(session_id)),)


def scale_changes() -> tuple[FieldChange, ...]:
    return (FieldChange(REPLICAS_PATH, 0),)


def lock_for(session_id: str, owner: str, now: datetime) -> Lock:
    return Lock(session_id, owner, Role.EXCHANGE, now)


def switched_service(service: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Selector mode: the Service selecting the shadow, the original and the lock recorded."""
    return modify.modified_body(
        service, selector_changes(lock.session), session_id=lock.session, lock=lock
    )


def locked_service(service: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Scale mode: the Service unchanged but for the lock (so one exchange at a time)."""
    return modify.modified_body(
        service, (FieldChange(LOCK_PATH, lock.encode()),), session_id=lock.session, lock=lock
    )


def relocked_service(current: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Scale mode, once the Deployment's pods are gone: the Service's own selector back
    (the shadow carries the template labels), the lock kept."""
    return locked_service(modify.restored_body(current), lock)


def scaled_deployment(deployment: Mapping[str, Any], session_id: str) -> JsonObject:
    return modify.modified_body(deployment, scale_changes(), session_id=session_id)


def restoration(body: Mapping[str, Any], session_id: str) -> JsonObject | None:
    """The body that undoes this session's change, or None if the change is not ours
    (any more): then it is not ours to touch."""
    if not modify.is_modified(body) or modify.modifier_session(body) != session_id:
        return None
    return modify.restored_body(body)


# --- the guard --------------------------------------------------------------------------------


class GuardAction(StrEnum):
    KEEP = "keep"  # ktpy's change is in place
    REAPPLY = "reapply"  # someone edited a field ktpy set: put ktpy's value back
    LOST = "lost"  # restored by someone else, or taken over: stop, touch nothing


@dataclass(frozen=True)
class GuardVerdict:
    action: GuardAction
    reason: str = ""
    body: JsonObject | None = None  # for REAPPLY: what to write (with resourceVersion)
    edited: tuple[str, ...] = ()  # for REAPPLY: the fields someone changed


def guard_verdict(
    body: Mapping[str, Any] | None,
    *,
    session_id: str,
    wanted: Sequence[FieldChange],
    what: str,
) -> GuardVerdict:
    """What to do about ``body`` (None: deleted) while this session holds it."""
    if body is None:
        return GuardVerdict(GuardAction.LOST, f"{what} was deleted while exchanged")
    if not modify.is_modified(body):
        return GuardVerdict(
            GuardAction.LOST,
            f"{what} was restored by someone else (ktpy clean or ktpy recover)",
        )
    holder = modify.modifier_session(body)
    if holder != session_id:
        lock = modify.lock_of(body)
        owner = f" of {lock.owner}" if lock and lock.session == holder else ""
        return GuardVerdict(
            GuardAction.LOST, f"{what} was taken over by ktpy session {holder}{owner}"
        )
    edited = tuple(c.pointer for c in wanted if modify.field_value(body, c.path) != c.value)
    if not edited:
        return GuardVerdict(GuardAction.KEEP)
    return GuardVerdict(
        GuardAction.REAPPLY,
        f"someone changed {', '.join(edited)} of {what}; ktpy's value is back",
        modify.with_changes(body, wanted),
        edited,
    )


# --- endpoints --------------------------------------------------------------------------------


def ready_endpoint_pods(slices: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the pods a Service's EndpointSlices send new connections to."""
    pods: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or ():
            ref = endpoint.get("targetRef") or {}
            ready = (endpoint.get("conditions") or {}).get("ready")
            # A missing ready condition means ready (EndpointSlice API).
            if ref.get("kind") == "Pod" and ready is not False:
                pods.add(str(ref.get("name")))
    return frozenset(pods)


def only_shadow(ready: frozenset[str], shadow: str) -> bool:
    return ready == {shadow}


def back_to_original(ready: frozenset[str], shadow: str, originals: Iterable[str]) -> bool:
    """The shadow gets no new connections and, if the original pods are ready, they do."""
    if shadow in ready:
        return False
    wanted = frozenset(originals)
    return not wanted or bool(ready & wanted)


# --- scale mode -------------------------------------------------------------------------------


def _template(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    return (deployment.get("spec") or {}).get("template") or {}


def selects_pods_of(selector: Mapping[str, str], deployment: Mapping[str, Any]) -> bool:
    """Whether a Service with ``selector`` selects the pods ``deployment`` makes."""
    template_meta = _template(deployment).get("metadata") or {}
    return labels.selector_matches(selector, template_meta.get("labels") or {})


def template_spec(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    return _template(deployment).get("spec") or {}


def backing_deployment(
    service: str, selector: Mapping[str, str], deployments: Iterable[Mapping[str, Any]]
) -> JsonObject:
    """The one Deployment whose pods the Service selects (scale mode)."""
    found = [dict(d) for d in deployments if selects_pods_of(selector, d)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(str(d["metadata"]["name"]) for d in found))
    detail = f"several Deployments ({names})" if found else "no Deployment"
    raise UsageProblem(
        f"service {service!r} selects the pods of {detail}; scale mode needs exactly one",
        hint="Use --mode selector, which works for any Service with a selector.",
    )


def template_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The labels a scale-mode shadow takes from the Deployment's pod template.

    Never ``pod-template-hash`` (the ReplicaSet would adopt and delete the pod), and
    never one of ktpy's own keys (ktpy's labels win, as on every shadow).
    """
    template = _template(deployment).get("metadata") or {}
    own = set(labels.session_labels("x", Role.EXCHANGE))
    return {
        k: v
        for k, v in labels.shadow_template_labels(template.get("labels") or {}).items()
        if k not in own
    }


def replicas_of(deployment: Mapping[str, Any]) -> int:
    value = (deployment.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def deployment_settled(deployment: Mapping[str, Any]) -> bool:
    """The controller has seen the latest spec and every wanted replica is ready."""
    meta = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    wanted = replicas_of(deployment)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= wanted
        and int(status.get("readyReplicas") or 0) >= wanted
        and int(status.get("replicas") or 0) == wanted
    )


def label_patch(extra: Mapping[str, str], *, remove: bool = False) -> JsonObject:
    """A merge patch adding (or removing) labels on the shadow pod."""
    return {"metadata": {"labels": {k: (None if remove else v) for k, v in extra.items()}}}
