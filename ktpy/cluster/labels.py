"""Labels and annotations: how ktpy marks what it creates and what it modifies.

Everything lives under one prefix, ``ktpy.dev/``, plus the well-known
``app.kubernetes.io/managed-by=ktpy`` label.

Labels (selectable, so short and label-value safe):

- ``app.kubernetes.io/managed-by=ktpy`` on every object ktpy creates;
- ``ktpy.dev/role``: connect, exchange, mesh, preview, forward, router, stuntman;
- ``ktpy.dev/session``: the session id (8 lowercase letters and digits);
- ``ktpy.dev/modified-by``: on a user's object ktpy changed, the session id;
- ``ktpy.dev/mesh-of``: on the mesh router's pods, the meshed Service (which
  selects them by it while it is switched to the router).

Annotations (free text, not selectable):

- ``ktpy.dev/owner``: ``user@host`` (an ``@`` is not allowed in label values);
- ``ktpy.dev/heartbeat``: RFC 3339 UTC time of the last refresh, cluster clock;
- ``ktpy.dev/pid-start``: ``<pid>:<start ticks>@<boot id>/<pid ns>/<time ns>/<host>``
  of the owning process, to tell at once that a session of this very host (same
  boot, PID and time namespace, hostname) has died (``PidStart``);
- ``ktpy.dev/target``: what the session works on, e.g. ``service/nginx``;
- ``ktpy.dev/original``: on a modified object, the original values of every
  field ktpy changed (JSON), so they can be put back exactly;
- ``ktpy.dev/lock``: on an exchanged or meshed Service, the holder (JSON);
- ``ktpy.dev/mark-<session>``: on a meshed Service, one member's header and
  value, owner and heartbeat (JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

PREFIX = "ktpy.dev/"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_KTPY = "ktpy"
ROLE = PREFIX + "role"
SESSION = PREFIX + "session"
MODIFIED_BY = PREFIX + "modified-by"
MESH_OF = PREFIX + "mesh-of"

OWNER = PREFIX + "owner"
HEARTBEAT = PREFIX + "heartbeat"
PID_START = PREFIX + "pid-start"
TARGET = PREFIX + "target"
ORIGINAL = PREFIX + "original"
LOCK = PREFIX + "lock"
# On a meshed Service, one per member session: ``ktpy.dev/mark-<session>`` (JSON).
MESH_MARK_PREFIX = PREFIX + "mark-"

# The ReplicaSet controller adopts any pod carrying its pod-template-hash (and then deletes it).
POD_TEMPLATE_HASH = "pod-template-hash"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class Role(StrEnum):
    CONNECT = "connect"
    EXCHANGE = "exchange"
    MESH = "mesh"
    PREVIEW = "preview"
    FORWARD = "forward"
    ROUTER = "router"
    STUNTMAN = "stuntman"
    DOCTOR = "doctor"


def is_label_value(text: str) -> bool:
    return len(text) <= 63 and bool(_LABEL_VALUE.match(text))


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second (what kubectl shows)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse RFC 3339 (``Z`` or an offset, optional fraction) to an aware UTC datetime."""
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time: it has no time zone")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class PidStart:
    """Identifies one process on one host's boot: pid numbers get reused, this does not.

    Written ``<pid>:<start ticks>@<boot id>/<pid ns>/<time ns>/<hostname>``: the pid is
    as its own PID namespace numbers it, the ticks as its time namespace counts them,
    so only a reader in the same namespaces (and under the same hostname) may judge
    it by the process table (``ktpy.host.procs.judge``). The older form
    ``<pid>:<start ticks>@<boot id>`` is still read; it names no namespace.
    """

    pid: int
    start_ticks: int
    boot_id: str
    pid_ns: int | None = None
    time_ns: int | None = None
    hostname: str | None = None

    def __str__(self) -> str:
        text = f"{self.pid}:{self.start_ticks}@{self.boot_id}"
        if self.pid_ns is None:
            return text
        return f"{text}/{self.pid_ns}/{self.time_ns or 0}/{self.hostname or ''}"

    @classmethod
    def parse(cls, text: str) -> PidStart:
        # The hostname comes last and takes the rest: the kernel allows any byte in it.
        match = re.fullmatch(r"(\d+):(\d+)@([0-9A-Za-z-]+)(?:/(\d+)/(\d+)/(.*))?", text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not <pid>:<start ticks>@<boot id>[/<pid ns>/<time ns>/<host>]"
            )
        pid, ticks, boot, pid_ns, time_ns, hostname = match.groups()
        if pid_ns is None:
            return cls(int(pid), int(ticks), boot)
        return cls(int(pid), int(ticks), boot, int(pid_ns), int(time_ns), hostname)


@dataclass(frozen=True)
class Lock:
    """Who holds a Service for exchange or mesh, written with the object's resourceVersion."""

    session: str
    owner: str
    role: Role
    since: datetime

    def encode(self) -> str:
        return json.dumps(
            {
                "session": self.session,
                "owner": self.owner,
                "role": self.role.value,
                "since": format_time(self.since),
            },
            sort_keys=True,
        )

    @classmethod
    def decode(cls, text: str) -> Lock:
        try:
            data = json.loads(text)
            return cls(
                session=str(data["session"]),
                owner=str(data["owner"]),
                role=Role(data["role"]),
                since=parse_time(str(data["since"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a ktpy lock: {text!r}") from exc


def session_labels(session_id: str, role: Role) -> dict[str, str]:
    return {MANAGED_BY: MANAGED_BY_KTPY, ROLE: role.value, SESSION: session_id}


def shadow_selector(session_id: str, role: Role) -> dict[str, str]:
    """What a Service selects to reach this session's shadow pod (and nothing else)."""
    return {ROLE: role.value, SESSION: session_id}


def session_annotations(
    *,
    owner: str,
    heartbeat: datetime,
    pid_start: PidStart | None = None,
    target: str | None = None,
) -> dict[str, str]:
    annotations = {OWNER: owner, HEARTBEAT: format_time(heartbeat)}
    if pid_start is not None:
        annotations[PID_START] = str(pid_start)
    if target is not None:
        annotations[TARGET] = target
    return annotations


def heartbeat_patch(now: datetime) -> dict[str, Any]:
    """A JSON merge patch that refreshes the heartbeat and touches nothing else."""
    return {"metadata": {"annotations": {HEARTBEAT: format_time(now)}}}


def format_selector(selector: Mapping[str, str]) -> str:
    """An equality-based label selector string, as the API's ``labelSelector`` takes."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_KTPY}"
MODIFIED_SELECTOR = MODIFIED_BY
# Where the lock sits in a held object.
LOCK_PATH = ("metadata", "annotations", LOCK)
# Kubernetes' own label on a Service's EndpointSlices.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def session_selector(session_id: str) -> str:
    return format_selector({MANAGED_BY: MANAGED_BY_KTPY, SESSION: session_id})


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a Service with ``selector`` selects a pod with ``labels``.

    An empty selector selects nothing here: a Service without a selector has
    no controller-made endpoints.
    """
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def shadow_template_labels(template_labels: Mapping[str, str]) -> dict[str, str]:
    """A Deployment's pod template labels, fit for a shadow pod (scale mode)."""
    return {key: value for key, value in template_labels.items() if key != POD_TEMPLATE_HASH}
