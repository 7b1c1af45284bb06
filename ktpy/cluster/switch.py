"""Switching a Service (or Deployment) to a shadow pod and back, over the ClusterApi.

The decisions are pure (``ktpy.cluster.exchange``); this module carries them
out: conditional writes that re-read and retry on 409, the take-over of a
stale holder, the restore that only ever undoes this session's own change,
waits on EndpointSlices and Deployments (watched, not polled), and the guard
that keeps ktpy's change in place while the session holds the lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from ktpy.cluster import exchange, labels, modify, ops
from ktpy.cluster.api import (
    ApiError,
    ClusterApi,
    Conflict,
    Gone,
    Kind,
    NotFound,
    WatchEventType,
    changes,
    watching,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.exchange import Decision, GuardAction
from ktpy.cluster.heartbeat import (
    LocalProcessCheck,
    SessionView,
    no_local_check,
    sessions_from_objects,
)
from ktpy.cluster.modify import FieldChange
from ktpy.errors import KtpyError, LockLost, ServiceNotFound
from ktpy.logs import get_logger

WRITE_ATTEMPTS = 20
CREATED_KINDS = (Kind.SERVICE, Kind.DEPLOYMENT, Kind.POD, Kind.SECRET)
MODIFIABLE_KINDS = (Kind.SERVICE, Kind.DEPLOYMENT)

log = get_logger("ktpy.switch")


def get_service(api: ClusterApi, namespace: str, name: str) -> JsonObject:
    try:
        return api.get(Kind.SERVICE, namespace, name)
    except NotFound:
        raise ServiceNotFound(name, namespace) from None


def namespace_sessions(api: ClusterApi, namespace: str) -> list[SessionView]:
    found: list[JsonObject] = []
    for kind in CREATED_KINDS:
        found += api.list_objects(kind, namespace, label_selector=labels.MANAGED_SELECTOR).items
    return sessions_from_objects(found)


# --- taking the lock ------------------------------------------------------------------------


def take(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    name: str,
    *,
    build: Callable[[JsonObject], JsonObject],
    check: Callable[[JsonObject], object] = lambda _: None,
    session_id: str,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
    on_takeover: Callable[[exchange.Holder], None] = lambda _: None,
) -> JsonObject:
    """Write ``build(current)`` conditionally (resourceVersion), so of sessions racing
    for one object exactly one wins; the others read again and find the holder.

    A live holder: AlreadyExchanged naming it. A stale or dead holder: its changes
    are restored and its objects deleted, then the object is taken. ``check`` runs
    on every fresh read (the object may have changed since it was validated).
    """
    for _ in range(WRITE_ATTEMPTS):
        try:
            current = api.get(kind, namespace, name)
        except NotFound:
            if kind is Kind.SERVICE:
                raise ServiceNotFound(name, namespace) from None
            raise
        check(current)
        sessions = namespace_sessions(api, namespace)  # after the read: see judge_lock
        now = api.server_time()
        judgement = exchange.judge_lock(
            current,
            sessions,
            me=session_id,
            now=now,
            stale_after=stale_after,
            check_local=check_local,
        )
        if judgement.decision is Decision.MINE:
            return current
        if judgement.decision is Decision.HELD:
            raise judgement.refusal(name, now)
        if judgement.decision is Decision.STALE:
            assert judgement.holder is not None
            on_takeover(judgement.holder)
            release_session(api, namespace, judgement.holder.session, also=(kind, name))
            continue
        try:
            return api.replace(kind, namespace, name, build(current))
        except Conflict:
            continue  # someone wrote in between: read again and judge again
    raise KtpyError(
        f"{kind.value.lower()} {name!r} keeps changing; could not take it",
        hint="Something rewrites it continuously; try again later.",
    )


def release_session(
    api: ClusterApi,
    namespace: str,
    session_id: str | None,
    *,
    also: tuple[Kind, str] | None = None,
) -> list[str]:
    """Undo everything a (dead) session did in a namespace: restore what it modified,
    then delete what it created. ``also`` is an object to restore even if the session
    id is unknown (a mark without a session). Returns what was done, for people."""
    done: list[str] = []
    targets: list[tuple[Kind, str]] = []
    if session_id:
        for kind in MODIFIABLE_KINDS:
            listed = api.list_objects(
                kind, namespace, label_selector=f"{labels.MODIFIED_BY}={session_id}"
            )
            targets += [(kind, str(b["metadata"]["name"])) for b in listed.items]
    if also is not None and also not in targets:
        targets.insert(0, also)
    # Deployments first: the pods come back before the Service's lock goes.
    targets.sort(key=lambda t: t[0] is not Kind.DEPLOYMENT)
    for kind, name in targets:
        if restore(api, kind, namespace, name, session_id, anyone=session_id is None):
            done.append(f"restored {kind.value.lower()}/{name}")
    if session_id:
        pods: list[tuple[Kind, str, str, str | None]] = []
        for kind in CREATED_KINDS:
            listed = api.list_objects(
                kind, namespace, label_selector=labels.session_selector(session_id)
            )
            for body in listed.items:
                meta = body["metadata"]
                with contextlib.suppress(NotFound, Conflict):
                    api.delete(kind, namespace, str(meta["name"]), uid=meta.get("uid"))
                    done.append(f"deleted {kind.value.lower()}/{meta['name']}")
                    if kind is Kind.POD:
                        pods.append((kind, namespace, str(meta["name"]), meta.get("uid")))
        ops.wait_gone(api, pods)
    return done


# --- restoring ---------------------------------------------------------------------------------


def restore(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    name: str,
    session_id: str | None,
    *,
    anyone: bool = False,
) -> JsonObject | None:
    """Put back the originals recorded on the object if ``session_id`` (or, with
    ``anyone``, whoever) modified it. Returns the restored object; None if it was
    not ours (any more), or is gone. Retries on 409."""
    for _ in range(WRITE_ATTEMPTS):
        try:
            current = api.get(kind, namespace, name)
        except NotFound:
            return None
        if anyone:
            body = modify.restored_body(current) if modify.is_modified(current) else None
        else:
            assert session_id is not None
            body = exchange.restoration(current, session_id)
        if body is None:
            return None
        try:
            return api.replace(kind, namespace, name, body)
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


# --- waiting --------------------------------------------------------------------------------


def _watch_until(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    *,
    label_selector: str = "",
    field_selector: str = "",
    done: Callable[[dict[str, JsonObject]], bool],
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """List, then watch, keeping the objects by name, until ``done(objects)``."""
    deadline = time.monotonic() + timeout
    while True:
        listed = api.list_objects(
            kind, namespace, label_selector=label_selector, field_selector=field_selector
        )
        objects = {str(b["metadata"]["name"]): b for b in listed.items}
        if done(objects):
            return True
        version = listed.resource_version
        try:
            while (remaining := deadline - time.monotonic()) > 0 and not stop():
                # Short watches, so a stop request is seen within about a second.
                with watching(
                    api,
                    kind,
                    namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    resource_version=version,
                    timeout_seconds=max(1, min(int(remaining + 0.999), 2)),
                ) as events:
                    for event in events:
                        version = event.resource_version or version
                        if event.type is WatchEventType.BOOKMARK:
                            continue
                        name = str(event.object["metadata"]["name"])
                        if event.type is WatchEventType.DELETED:
                            objects.pop(name, None)
                        else:
                            objects[name] = event.object
                        if done(objects):
                            return True
                        if stop() or time.monotonic() >= deadline:
                            break
        except Gone:
            continue  # list again, from a version the server still has
        return False


def wait_endpoints(
    api: ClusterApi,
    namespace: str,
    service: str,
    done: Callable[[frozenset[str]], bool],
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the pods the Service's EndpointSlices call ready satisfy ``done``."""
    return _watch_until(
        api,
        Kind.ENDPOINT_SLICE,
        namespace,
        label_selector=f"{exchange.SERVICE_NAME_LABEL}={service}",
        done=lambda slices: done(exchange.ready_endpoint_pods(slices.values())),
        timeout=timeout,
        stop=stop,
    )


def ready_pods(api: ClusterApi, namespace: str, selector: dict[str, str]) -> list[str]:
    listed = api.list_objects(Kind.POD, namespace, label_selector=labels.format_selector(selector))
    return sorted(serving_pods({str(p["metadata"]["name"]): p for p in listed.items}))


def serving_pods(pods: dict[str, JsonObject]) -> frozenset[str]:
    """Of listed pods, those ready and not terminating (what kube-proxy sends new
    connections to once a Service selects them)."""
    names = []
    for name, pod in pods.items():
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or ()
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            names.append(name)
    return frozenset(names)


def wait_pods(
    api: ClusterApi,
    namespace: str,
    selector: dict[str, str],
    done: Callable[[frozenset[str]], bool],
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the ready, non-terminating pods ``selector`` selects satisfy ``done``."""
    return _watch_until(
        api,
        Kind.POD,
        namespace,
        label_selector=labels.format_selector(selector),
        done=lambda pods: done(serving_pods(pods)),
        timeout=timeout,
        stop=stop,
    )


def wait_deployment(
    api: ClusterApi,
    namespace: str,
    name: str,
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the Deployment's wanted replicas are all ready."""
    return _watch_until(
        api,
        Kind.DEPLOYMENT,
        namespace,
        field_selector=f"metadata.name={name}",
        done=lambda found: name in found and exchange.deployment_settled(found[name]),
        timeout=timeout,
        stop=stop,
    )


# --- the guard ------------------------------------------------------------------------------


class Guard:
    """Keeps ktpy's change to one object in place while this session holds it.

    Someone else's edit of a field ktpy set is undone (and logged). If the change
    was restored by someone else (``ktpy clean`` after the laptop slept, ``ktpy
    recover``) or the lock was taken over, the guard sets ``lost`` and touches
    nothing more: the session stops instead of fighting.
    """

    def __init__(
        self,
        api: ClusterApi,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        session_id: str,
        wanted: Sequence[FieldChange],
        resource_version: str,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.session_id = session_id
        self.wanted = tuple(wanted)
        self.what = f"{kind.value.lower()} {name!r}"
        self.lost = threading.Event()
        self.reason = ""
        self.reapplied = 0
        self._version = resource_version
        self._stopped = threading.Event()
        self._writing = threading.Lock()  # held while the guard may write
        self._thread: threading.Thread | None = None
        self.log = get_logger("ktpy.guard", object=f"{kind.value.lower()}/{name}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"guard-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """After this returns the guard writes nothing more (teardown may restore)."""
        with self._writing:
            self._stopped.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set() and not self.lost.is_set():
            try:
                self._watch_once()
                failures = 0
            except Gone:
                self._recheck()
            except (ApiError, KtpyError, OSError) as exc:
                failures += 1
                self.log.warning("watch failed; will retry", reason=str(exc))
                if self._stopped.wait(min(0.5 * failures, 5.0)):
                    return
                with contextlib.suppress(ApiError, KtpyError, OSError):
                    self._recheck()

    def _resume_at(self, version: str) -> None:
        self._version = version

    def _watch_once(self) -> None:
        with watching(
            self.api,
            self.kind,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=self._version,
            timeout_seconds=30,
        ) as events:
            for event in changes(events, self._resume_at, self._stopped.is_set):
                body = None if event.type is WatchEventType.DELETED else event.object
                if not self._judge(body):
                    self._recheck()
                if self.lost.is_set():
                    return

    def _recheck(self) -> None:
        for _ in range(WRITE_ATTEMPTS):
            try:
                body: JsonObject | None = self.api.get(self.kind, self.namespace, self.name)
            except NotFound:
                body = None
            if body is not None:
                self._version = str(body["metadata"].get("resourceVersion", ""))
            if self._judge(body):
                return

    def _judge(self, body: JsonObject | None) -> bool:
        """Act on one version of the object. False if a write lost a race (read again)."""
        with self._writing:
            if self._stopped.is_set():
                return True
            verdict = exchange.guard_verdict(
                body, session_id=self.session_id, wanted=self.wanted, what=self.what
            )
            if verdict.action is GuardAction.KEEP:
                return True
            if verdict.action is GuardAction.LOST:
                self.reason = verdict.reason
                self.log.error("lost the lock", reason=verdict.reason)
                self.lost.set()
                return True
            assert verdict.body is not None
            try:
                written = self.api.replace(self.kind, self.namespace, self.name, verdict.body)
            except Conflict:
                return False
            self.reapplied += 1
            self._version = str(written["metadata"].get("resourceVersion", self._version))
            self.log.warning(verdict.reason, fields=list(verdict.edited))
            return True
