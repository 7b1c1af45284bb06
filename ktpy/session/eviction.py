"""What the end of a shadow pod means for its session: an eviction is survived, any
other end is not.

A node drain evicts pods through the Eviction API, which marks each pod with the
``DisruptionTarget`` condition before deleting it (so do the scheduler's
preemption, the taint manager and the kubelet's node-pressure eviction, each with
its own reason). The cluster asked the pod to move, not the session to end: the
session makes a new shadow pod under the same name and labels, so a Service
that selected the old one selects the new one. A pod deleted without that mark
was deleted by a person (or a tool of theirs): the session ends, saying so, and
restores everything.

``ShadowWatch`` is the decision, a sans-I/O core (``ktpy.sansio``): it hears of
the pod as a watch sees it (``PodSeen``: the body, or None once gone) and of
the replacement's outcome, and answers ``Replace`` or ``Lose``. The session's
keeper thread feeds it and carries out what it answers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ktpy.sansio import Action, Event

DISRUPTION_TARGET = "DisruptionTarget"
ENDED_PHASES = ("Failed", "Succeeded")


def disruption(pod: Mapping[str, Any]) -> str | None:
    """The ``DisruptionTarget`` condition's reason (``EvictionByEvictionAPI``...) if the
    cluster marked the pod for disruption, else None."""
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == DISRUPTION_TARGET and condition.get("status") == "True":
            return str(condition.get("reason") or DISRUPTION_TARGET)
    return None


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _ending(pod: Mapping[str, Any]) -> bool:
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp") is not None
    return deleting or (pod.get("status") or {}).get("phase") in ENDED_PHASES


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodSeen(Event):
    """The pod of the shadow's name as a watch shows it now; None: no such pod."""

    pod: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Replaced(Event):
    """The new shadow pod serves (Ready, the tunnel may reconnect)."""

    uid: str


@dataclass(frozen=True, slots=True)
class ReplaceFailed(Event):
    reason: str


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replace(Action):
    """Make a new shadow pod in place of ``old`` (its last body: uid and labels)."""

    old: Mapping[str, Any]
    why: str


@dataclass(frozen=True, slots=True)
class Lose(Action):
    """The session cannot go on: stop it, restore everything, say ``reason``."""

    reason: str


class State(enum.Enum):
    SERVING = "serving"
    REPLACING = "replacing"
    LOST = "lost"


class ShadowWatch:
    """The decision over one shadow pod's name, across its replacements."""

    def __init__(self, name: str, uid: str) -> None:
        self.name = name
        self.uid = uid  # the pod this session serves from now
        self.state = State.SERVING
        self.replacements = 0
        self._retired: set[str] = set()  # uids of pods replaced: their late events mean nothing
        self._last: Mapping[str, Any] = {"metadata": {"name": name, "uid": uid}}

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, PodSeen):
            return self._seen(event.pod)
        if isinstance(event, Replaced) and self.state is State.REPLACING:
            self._retired.add(self.uid)
            self.uid = event.uid
            self._last = {"metadata": {"name": self.name, "uid": event.uid}}
            self.state = State.SERVING
            self.replacements += 1
            return []
        if isinstance(event, ReplaceFailed) and self.state is State.REPLACING:
            self.state = State.LOST
            return [
                Lose(f"shadow pod {self.name} was evicted and no new one serves: {event.reason}")
            ]
        return []

    def _seen(self, pod: Mapping[str, Any] | None) -> list[Action]:
        if self.state is not State.SERVING:
            return []  # the old pod's last events, or the new one starting: the replacer's
        if pod is not None and _uid(pod) in self._retired:
            return []
        if pod is not None and _uid(pod) == self.uid:
            self._last = pod
            if not _ending(pod):
                return []
            return self._judge(pod)
        # Ours is gone (or the name is another's now) without its end seen: judge its last body.
        return self._judge(self._last)

    def _judge(self, pod: Mapping[str, Any]) -> list[Action]:
        reason = disruption(pod)
        if reason is not None:
            self.state = State.REPLACING
            return [Replace(pod, f"shadow pod {self.name} was evicted ({reason})")]
        self.state = State.LOST
        phase = (pod.get("status") or {}).get("phase")
        if phase in ENDED_PHASES and (pod.get("metadata") or {}).get("deletionTimestamp") is None:
            return [Lose(f"shadow pod {self.name} stopped (phase {phase}) without being evicted")]
        return [
            Lose(
                f"shadow pod {self.name} was deleted by someone, not evicted "
                f"(no {DISRUPTION_TARGET} condition)"
            )
        ]
