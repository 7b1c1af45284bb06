"""Sessions as seen from the cluster, and whether each one is still alive.

Plain data with an injected clock, in the manner of kopf's ``Peer``: a
session's objects carry a heartbeat annotation that its process refreshes
every ``interval``; a session whose newest heartbeat is older than
``stale_after`` is stale. "Now" is the cluster's time (the API server's
``Date`` header, see ``parse_http_date``), never the laptop's, so a skewed
laptop clock cannot make a live session look dead (kt-connect #299).

A session started by this very host can be judged at once: if its process
(``ktpy.dev/pid-start``) is gone, the session is dead whatever its heartbeat
says. "This very host" means provably so: the same boot, PID namespace, time
namespace and hostname (a dev container or WSL distribution shares the boot
id but not the pids). Every other session, old records included, is judged by
its heartbeat alone. The rule is ``ktpy.host.procs.judge``, reached through an
injected function (``LocalProcessCheck``) that answers ``ELSEWHERE`` whenever
it cannot prove the process is local.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from ktpy.cluster import labels
from ktpy.cluster.labels import PidStart, Role

DEFAULT_INTERVAL = timedelta(seconds=30)
DEFAULT_STALE_AFTER = timedelta(minutes=3)

# A session's main role is that of its shadow pod; routers and stuntmen serve it.
_SESSION_ROLES = (
    Role.CONNECT,
    Role.EXCHANGE,
    Role.MESH,
    Role.PREVIEW,
    Role.FORWARD,
    Role.DOCTOR,
)


class Liveness(StrEnum):
    LIVE = "live"
    STALE = "stale"
    DEAD = "dead"  # its process, provably of this host, is gone


class LocalProcess(StrEnum):
    ALIVE = "alive"
    GONE = "gone"
    # Not provably a process of this host (another machine, boot, PID namespace...): the
    # heartbeat decides.
    ELSEWHERE = "elsewhere"


LocalProcessCheck = Callable[[PidStart], LocalProcess]


def no_local_check(_: PidStart) -> LocalProcess:
    return LocalProcess.ELSEWHERE


def parse_http_date(value: str) -> datetime:
    """The API server's ``Date`` header (RFC 9110 IMF-fixdate, or the obsolete forms)."""
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{value!r} is not an HTTP date") from None
    if moment.tzinfo is None:
        # RFC 9110: HTTP dates are always GMT, even when written "-0000".
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class HeartbeatPolicy:
    interval: timedelta = DEFAULT_INTERVAL
    stale_after: timedelta = DEFAULT_STALE_AFTER

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise ValueError("the heartbeat interval must be positive")
        if self.stale_after < 2 * self.interval:
            raise ValueError(
                f"stale after {self.stale_after.total_seconds():g}s is less than twice the "
                f"heartbeat interval ({self.interval.total_seconds():g}s): "
                "live sessions would look stale"
            )


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str
    uid: str | None = None
    terminating: bool = False

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} (namespace {self.namespace})"


def object_ref(body: Mapping[str, Any]) -> ObjectRef:
    """An ObjectRef of an API object; the API module fills in ``kind`` on listed items."""
    meta = body.get("metadata") or {}
    return ObjectRef(
        kind=str(body.get("kind", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=meta.get("uid"),
        terminating=meta.get("deletionTimestamp") is not None,
    )


def _time_or_none(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return labels.parse_time(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class SessionView:
    """One session, gathered from all the objects that carry its session label."""

    namespace: str
    session_id: str
    role: Role | None
    owner: str | None
    heartbeat: datetime | None
    created: datetime | None
    pid_start: PidStart | None
    target: str | None
    objects: tuple[ObjectRef, ...]

    @property
    def last_sign_of_life(self) -> datetime | None:
        """The newest heartbeat, or the creation time if no object has one yet."""
        return self.heartbeat or self.created

    def deadline(self, stale_after: timedelta) -> datetime | None:
        last = self.last_sign_of_life
        return None if last is None else last + stale_after

    def is_stale(self, now: datetime, stale_after: timedelta) -> bool:
        deadline = self.deadline(stale_after)
        # Objects with neither a heartbeat nor a creation time are not ktpy's doing: stale.
        return deadline is None or now >= deadline

    def liveness(
        self,
        now: datetime,
        stale_after: timedelta,
        check_local: LocalProcessCheck = no_local_check,
    ) -> Liveness:
        if self.pid_start is not None:
            local = check_local(self.pid_start)
            if local is LocalProcess.GONE:
                return Liveness.DEAD
            if local is LocalProcess.ALIVE:
                # Our own machine says the process runs (it may just have woken from sleep).
                return Liveness.LIVE
        return Liveness.STALE if self.is_stale(now, stale_after) else Liveness.LIVE

    def age(self, now: datetime) -> timedelta | None:
        return None if self.created is None else now - self.created

    def heartbeat_age(self, now: datetime) -> timedelta | None:
        return None if self.heartbeat is None else now - self.heartbeat


@dataclass
class _Gathering:
    namespace: str
    session_id: str
    roles: list[Role]
    owner: str | None = None
    heartbeat: datetime | None = None
    created: datetime | None = None
    pid_start: PidStart | None = None
    target: str | None = None
    objects: list[ObjectRef] = field(default_factory=list)


def sessions_from_objects(objects: Iterable[Mapping[str, Any]]) -> list[SessionView]:
    """Group the objects ktpy created (``managed-by=ktpy``) by namespace and session."""
    gathered: dict[tuple[str, str], _Gathering] = {}
    for body in objects:
        meta = body.get("metadata") or {}
        object_labels = meta.get("labels") or {}
        if object_labels.get(labels.MANAGED_BY) != labels.MANAGED_BY_KTPY:
            continue
        session_id = object_labels.get(labels.SESSION)
        if not session_id:
            continue
        ref = object_ref(body)
        key = (ref.namespace, session_id)
        entry = gathered.setdefault(key, _Gathering(ref.namespace, session_id, []))
        entry.objects.append(ref)
        annotations = meta.get("annotations") or {}
        with contextlib.suppress(ValueError):
            entry.roles.append(Role(object_labels.get(labels.ROLE, "")))
        entry.owner = entry.owner or annotations.get(labels.OWNER)
        entry.target = entry.target or annotations.get(labels.TARGET)
        beat = _time_or_none(annotations.get(labels.HEARTBEAT))
        if beat is not None and (entry.heartbeat is None or beat > entry.heartbeat):
            entry.heartbeat = beat
        created = _time_or_none(meta.get("creationTimestamp"))
        if created is not None and (entry.created is None or created < entry.created):
            entry.created = created
        if entry.pid_start is None and labels.PID_START in annotations:
            with contextlib.suppress(ValueError):
                entry.pid_start = PidStart.parse(annotations[labels.PID_START])
    return [_view(entry) for _, entry in sorted(gathered.items())]


def _view(entry: _Gathering) -> SessionView:
    main_role = next((r for r in _SESSION_ROLES if r in entry.roles), None)
    if main_role is None and entry.roles:
        main_role = entry.roles[0]
    return SessionView(
        namespace=entry.namespace,
        session_id=entry.session_id,
        role=main_role,
        owner=entry.owner,
        heartbeat=entry.heartbeat,
        created=entry.created,
        pid_start=entry.pid_start,
        target=entry.target,
        objects=tuple(sorted(entry.objects, key=lambda r: (r.kind, r.name))),
    )
