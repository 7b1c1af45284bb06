"""Keeping a redirect in place while its session holds the lock.

``guard_verdict`` is the pure judgement of one version of the object;
``Guard`` follows the object (the API's watch helper) and acts on it: an
outside edit of a field ktpy set is undone, a restore or take-over by
someone else stops the session instead of a fight.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ktpy.cluster import modify
from ktpy.cluster.api import (
    ClusterApi,
    Conflict,
    Kind,
    ListResult,
    follow,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.modify import FieldChange
from ktpy.logs import get_logger


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
        body: JsonObject,
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

    def _judge(self, body: JsonObject | None) -> None:
        """Act on one version of the object (None: deleted)."""
        with self._writing:
            if self._stopped.is_set():
                return
            verdict = guard_verdict(
                body, session_id=self.session_id, wanted=self.wanted, what=self.what
            )
            if verdict.action is GuardAction.KEEP:
                return
            if verdict.action is GuardAction.LOST:
                self.reason = verdict.reason
                self.log.error("lost the lock", reason=verdict.reason)
                self.lost.set()
                return
            assert verdict.body is not None
            try:
                self.api.replace(self.kind, self.namespace, self.name, verdict.body)
            except Conflict:
                return
            self.reapplied += 1
            self.log.warning(verdict.reason, fields=list(verdict.edited))
