"""A Service pointed at a shadow pod and back, exactly.

The bodies of the changes (selector switch, replicas to 0, lock only, each
with the originals recorded by ``modify``), the restore that only ever undoes
one session's own change, and the conditional writes that carry them out
(re-read and retry on 409). The waits that prove a switch took effect are
in ``waits``; who may switch is decided by ``lock``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from ktpy.cluster import labels, modify
from ktpy.cluster.api import (
    ClusterApi,
    Conflict,
    Kind,
    NotFound,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.modify import WRITE_ATTEMPTS, FieldChange, LeftField, Restored
from ktpy.errors import (
    KtpyError,
    LockLost,
    NoSelector,
    UsageProblem,
)

SELECTOR_PATH = ("spec", "selector")
REPLICAS_PATH = ("spec", "replicas")


class Mode(StrEnum):
    SELECTOR = "selector"
    SCALE = "scale"


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


# --- the changes ------------------------------------------------------------------------------


def exchange_selector(session_id: str) -> dict[str, str]:
    return labels.shadow_selector(session_id, Role.EXCHANGE)


def selector_changes(session_id: str) -> tuple[FieldChange, ...]:
    return (FieldChange(SELECTOR_PATH, exchange_selector(session_id)),)


def scale_changes() -> tuple[FieldChange, ...]:
    return (FieldChange(REPLICAS_PATH, 0),)


def switched_service(service: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Selector mode: the Service selecting the shadow, the original and the lock recorded."""
    return modify.modified_body(
        service, selector_changes(lock.session), session_id=lock.session, lock=lock
    )


def locked_service(service: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Scale mode: the Service unchanged but for the lock (so one exchange at a time)."""
    return modify.modified_body(
        service, (FieldChange(labels.LOCK_PATH, lock.encode()),), session_id=lock.session, lock=lock
    )


def relocked_service(current: Mapping[str, Any], lock: Lock) -> JsonObject:
    """Scale mode, once the Deployment's pods are gone: the Service's own selector back
    (the shadow carries the template labels), the lock kept."""
    return locked_service(modify.restored_body(current), lock)


def scaled_deployment(deployment: Mapping[str, Any], session_id: str) -> JsonObject:
    return modify.modified_body(deployment, scale_changes(), session_id=session_id)


def restoration(body: Mapping[str, Any], session_id: str) -> Restored | None:
    """What undoes this session's change (the body, and the fields someone else set
    meanwhile, left as they are), or None if the change is not ours (any more): then
    it is not ours to touch."""
    if not modify.is_modified(body) or modify.modifier_session(body) != session_id:
        return None
    return modify.restore_plan(body)


def left_line(left: Sequence[LeftField], what: str) -> str | None:
    """One line naming the fields a restore left as someone else set them."""
    if not left:
        return None
    said = "; ".join(f.words(what) for f in left)
    return f"{said[0].upper()}{said[1:]} (changed while ktpy held it)"


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


def service_of_deployment(
    deployment: Mapping[str, Any], services: Iterable[Mapping[str, Any]]
) -> str:
    """The one Service that selects ``deployment``'s pods (a target written
    ``deploy/NAME``, as kt-connect takes it)."""
    name = str((deployment.get("metadata") or {}).get("name", "?"))
    found = sorted(
        str(s["metadata"]["name"])
        for s in services
        if selector_of(s) and selects_pods_of(selector_of(s), deployment)
    )
    if len(found) == 1:
        return found[0]
    detail = f"several Services ({', '.join(found)})" if found else "no Service"
    raise UsageProblem(
        f"deployment {name!r}: {detail} select its pods",
        hint="Name the Service itself: svc/NAME or NAME.",
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


def label_patch(extra: Mapping[str, str], *, remove: bool = False) -> JsonObject:
    """A merge patch adding (or removing) labels on the shadow pod."""
    return {"metadata": {"labels": {k: (None if remove else v) for k, v in extra.items()}}}


# --- carrying out ---------------------------------------------------------------------------


def restore(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    name: str,
    session_id: str | None,
    *,
    anyone: bool = False,
) -> Restored | None:
    """Put back the originals recorded on the object if ``session_id`` (or, with
    ``anyone``, whoever) modified it, where the fields still hold ktpy's values.
    Returns the restored object and the fields left as someone else set them; None
    if it was not ours (any more), or is gone. Retries on 409."""
    for _ in range(WRITE_ATTEMPTS):
        try:
            current = api.get(kind, namespace, name)
        except NotFound:
            return None
        if anyone:
            plan = modify.restore_plan(current) if modify.is_modified(current) else None
        else:
            assert session_id is not None
            plan = restoration(current, session_id)
        if plan is None:
            return None
        try:
            return Restored(api.replace(kind, namespace, name, plan.body), plan.left)
        except Conflict:
            continue
    raise KtpyError(
        f"could not restore {kind.value.lower()} {name!r}: it keeps changing",
        hint="Run 'ktpy recover' for it again.",
    )


def rewrite(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    name: str,
    session_id: str,
    build: Callable[[JsonObject], JsonObject],
) -> JsonObject:
    """Change an object this session holds, conditionally; LockLost if it is not ours
    any more (restored or taken over meanwhile). Retries on 409."""
    for _ in range(WRITE_ATTEMPTS):
        current = api.get(kind, namespace, name)
        if modify.modifier_session(current) != session_id or not modify.is_modified(current):
            raise LockLost(f"{kind.value.lower()} {name!r} is no longer held by this session")
        try:
            return api.replace(kind, namespace, name, build(current))
        except Conflict:
            continue
    raise KtpyError(f"{kind.value.lower()} {name!r} keeps changing; could not update it")
