"""Keeping a redirect in place while its session holds the lock.

``guard_verdict`` is the pure judgement of one version of the object;
``Guard`` follows the object (the API's watch helper) and acts on it: an
outside edit of a field ktpy set is undone, a restore or take-over by
someone else stops the session instead of a fight.

Against a writer that keeps setting the field back (Argo CD's or Flux's
self-heal, an operator, an autoscaler) re-asserting forever is a fight nobody
wins: ktpy puts its value back at most ``REASSERT_LIMIT`` times within
``REASSERT_WINDOW``, each after a growing pause (``REASSERT_BACKOFF``), and then
stops the session with one line naming the field and the writer (its field
manager in ``managedFields``). Each re-assertion records the writer's value as
the field's original, so the restore at the end gives them what they set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ktpy.cluster import modify
from ktpy.cluster.api import (
    ApiError,
    ClusterApi,
    Conflict,
    Kind,
    ListResult,
    NotFound,
    follow,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.modify import FieldChange
from ktpy.errors import ContestedField, KtpyError, LockLost
from ktpy.logs import get_logger

REASSERT_LIMIT = 3  # ktpy's value put back at most this often within the window...
REASSERT_WINDOW = 60.0  # ...seconds; one more outside edit in it stops the session
REASSERT_BACKOFF = (0.5, 1.0, 2.0)  # the pause before the 1st, 2nd, 3rd re-assertion


@dataclass
class Fight:
    """The re-assertions of ktpy's value within a sliding window (pure; the clock is
    passed in)."""

    limit: int = REASSERT_LIMIT
    window: float = REASSERT_WINDOW
    backoff: tuple[float, ...] = REASSERT_BACKOFF
    times: list[float] = field(default_factory=list)

    def recent(self, now: float) -> int:
        self.times = [t for t in self.times if now - t < self.window]
        return len(self.times)

    def may_reassert(self, now: float) -> bool:
        return self.recent(now) < self.limit

    def pause(self, now: float) -> float:
        return self.backoff[min(self.recent(now), len(self.backoff) - 1)]

    def reasserted(self, now: float) -> None:
        self.times.append(now)


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
    writer: str = ""  # for REAPPLY: their field manager(s), "unknown" if not recorded


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
    edited = tuple(c for c in wanted if modify.field_value(body, c.path) != c.value)
    if not edited:
        return GuardVerdict(GuardAction.KEEP)
    pointers = tuple(c.pointer for c in edited)
    # Their value becomes the field's original: the restore gives them what they set.
    adopted: Mapping[str, Any] = body
    for change in edited:
        writer = modify.field_writer(body, change.path)
        adopted = modify.adopt(adopted, change.path, modify.field_value(body, change.path), writer)
    return GuardVerdict(
        GuardAction.REAPPLY,
        f"someone changed {', '.join(pointers)} of {what}; ktpy's value is back",
        modify.with_changes(adopted, wanted),
        pointers,
        writer=", ".join(sorted({modify.field_writer(body, c.path) or "unknown" for c in edited})),
    )


def contested_hint(kind: Kind) -> str:
    if kind is Kind.DEPLOYMENT:
        return (
            "Pause that writer (its sync, or the HorizontalPodAutoscaler) while you exchange, "
            "or use 'ktpy exchange --mode selector', which leaves the Deployment alone."
        )
    return (
        "Pause that writer's sync of the Service while the session runs (Argo CD: turn off "
        "self-heal; Flux: suspend it), or use 'ktpy exchange --mode scale', which keeps the "
        "Service's own selector."
    )


class Guard:
    """Keeps ktpy's change to one object in place while this session holds it.

    Someone else's edit of a field ktpy set is undone (and logged), a bounded
    number of times (``Fight``); a writer that keeps at it wins: the guard sets
    ``lost`` with a ``ContestedField`` error and writes nothing more. If the change
    was restored by someone else (``ktpy clean`` after the laptop slept, ``ktpy
    recover``) or the lock was taken over, the guard sets ``lost`` (``LockLost``)
    and touches nothing more: the session stops instead of fighting.
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
        body: JsonObject,
        fight: Fight | None = None,
        clock: Callable[[], float] = time.monotonic,
        hint: str | None = None,
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
        self.error: KtpyError | None = None  # what the session stops with once lost
        self.reapplied = 0
        self.fight = fight or Fight()
        self.hint = hint if hint is not None else contested_hint(kind)  # once a writer wins
        self._clock = clock
        self._first_edit: float | None = None
        self._body = body  # as this session wrote it
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
        for _ in self.steps():
            pass

    def steps(self) -> Iterator[None]:
        """Follow the object and judge each version of it; one step per version (the
        thread runs them all; a test can take them one by one)."""

        def retry(exc: Exception, _failures: int) -> bool:
            self.log.warning("watch failed; will retry", reason=str(exc))
            return True

        followed = follow(
            self.api,
            self.kind,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            stop=lambda: self._stopped.is_set() or self.lost.is_set(),
            # From the body this session wrote: every later change is seen.
            listed=ListResult((self._body,), str(self._body["metadata"].get("resourceVersion"))),
            watch_seconds=30,
            retry=retry,
            pause=self._stopped.wait,
        )
        for objects in followed:
            # A write that lost a race is judged again when the newer version arrives.
            self._judge(objects.get(self.name))
            yield

    def _verdict(self, body: JsonObject | None) -> GuardVerdict:
        return guard_verdict(body, session_id=self.session_id, wanted=self.wanted, what=self.what)

    def _judge(self, body: JsonObject | None) -> None:
        """Act on one version of the object (None: deleted)."""
        with self._writing:
            if self._stopped.is_set():
                return
            verdict = self._verdict(body)
            if verdict.action is GuardAction.KEEP:
                return
            if verdict.action is GuardAction.LOST:
                self._give_up(LockLost(f"{verdict.reason}; this session stops"), verdict.reason)
                return
            now = self._clock()
            if self._first_edit is None or not self.fight.recent(now):
                self._first_edit = now
            if not self.fight.may_reassert(now):
                self._contested(verdict, now)
                return
            pause = self.fight.pause(now)
        # Back off before answering (without the lock: a stop must not wait for it), then
        # judge the object as it is now: the writer may have given up, or won already.
        if self._stopped.wait(pause):
            return
        try:
            current: JsonObject | None = self.api.get(self.kind, self.namespace, self.name)
        except NotFound:
            current = None
        except (ApiError, KtpyError) as exc:
            self.log.warning("could not read it again; will judge the next change", reason=str(exc))
            return
        with self._writing:
            if self._stopped.is_set():
                return
            verdict = self._verdict(current)
            if verdict.action is GuardAction.LOST:
                self._give_up(LockLost(f"{verdict.reason}; this session stops"), verdict.reason)
                return
            if verdict.action is GuardAction.KEEP:
                return
            assert verdict.body is not None
            try:
                self.api.replace(self.kind, self.namespace, self.name, verdict.body)
            except Conflict:
                return
            self.fight.reasserted(self._clock())
            self.reapplied += 1
            self.log.warning(verdict.reason, fields=list(verdict.edited), writer=verdict.writer)

    def _contested(self, verdict: GuardVerdict, now: float) -> None:
        fields = ", ".join(verdict.edited)
        since = now - (self._first_edit if self._first_edit is not None else now)
        line = (
            f"{verdict.writer} keeps setting {fields} of {self.what} back "
            f"(ktpy put its value back {self.fight.recent(now)} times in {since:.0f}s); "
            "this session stops instead of fighting it"
        )
        self._give_up(ContestedField(line, hint=self.hint), line)

    def _give_up(self, error: KtpyError, reason: str) -> None:
        self.reason = reason
        self.error = error
        self.log.error("gave up the object", reason=reason)
        self.lost.set()
