"""The Roles of docs/rbac/ as sets of (verb, resource), and ktpy's record of the API
calls it made (its ``--debug --log-format json`` lines ``api call``), for the unit
and end-to-end tests that hold one against the other."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

RBAC_DIR = Path(__file__).resolve().parents[1] / "docs" / "rbac"
# Rules a command needs on a path a normal run does not take, named in the Role's
# annotation (e.g. "get pods": telling a deleted shadow from a failed heartbeat).
SOMETIMES_USED = "ktpy.dev/sometimes-used"

Access = tuple[str, str]  # (verb, resource as RBAC names it: "services", "apps/deployments")


@dataclass(frozen=True)
class Role:
    name: str
    kind: str
    rules: frozenset[Access]
    sometimes_used: frozenset[Access]


def load_role(command: str) -> Role:
    body = yaml.safe_load((RBAC_DIR / f"{command}.yaml").read_text())
    rules: set[Access] = set()
    for rule in body["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                named = f"{group}/{resource}" if group else resource
                rules.update((verb, named) for verb in rule["verbs"])
    rare_text = (body["metadata"].get("annotations") or {}).get(SOMETIMES_USED, "")
    rare = {tuple(item.split()) for item in rare_text.split(",") if item.strip()}
    return Role(body["metadata"]["name"], body["kind"], frozenset(rules), frozenset(rare))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Call:
    verb: str
    resource: str
    namespace: str
    status: int

    @property
    def access(self) -> Access:
        return (self.verb, self.resource)


def recorded_calls(lines: Iterable[str]) -> list[Call]:
    calls = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "api call":
            calls.append(
                Call(event["verb"], event["resource"], event["namespace"], int(event["status"]))
            )
    return calls
