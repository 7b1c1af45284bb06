"""The rights each command needs, asked once each (SelfSubjectAccessReview bodies)."""

from __future__ import annotations

import pytest

from ktpy.cluster import access
from ktpy.cluster.access import Right
from tests.rbac import RBAC_DIR, load_role

ROLE_FILES = {path.stem for path in RBAC_DIR.glob("*.yaml")}


def test_each_right_is_asked_once_and_missing_ones_are_named_per_command() -> None:
    asked: list[Right] = []

    def ask(right: Right, namespace: str) -> bool:
        assert namespace == "dev"
        asked.append(right)
        return right != Right("create", "pods", "", "portforward")

    found = {m.command: m.rights for m in access.missing_rights("dev", ask)}
    assert len(asked) == len(set(asked))
    assert found["forward"] == (Right("create", "pods", "", "portforward"),)
    assert found["env"] == ()
    assert found["doctor"][0].describe() == "create pods/portforward"


def test_review_body_names_the_subresource_only_when_there_is_one() -> None:
    body = access.review_body(Right("update", "deployments", "apps"), "dev")
    assert body["kind"] == "SelfSubjectAccessReview"
    assert body["spec"] == {
        "resourceAttributes": {
            "namespace": "dev", "verb": "update", "group": "apps", "resource": "deployments",
        }
    }  # fmt: skip
    forward = access.review_body(Right("create", "pods", "", "portforward"), "dev")
    assert forward["spec"]["resourceAttributes"]["subresource"] == "portforward"  # type: ignore[index]


def test_every_command_in_the_table_exists() -> None:
    from ktpy.commands import COMMANDS

    assert set(access.NEEDS) <= {c.name for c in COMMANDS}


def _as_rbac(right: Right) -> tuple[str, str]:
    resource = f"{right.resource}/{right.subresource}" if right.subresource else right.resource
    return right.verb, f"{right.group}/{resource}" if right.group else resource


@pytest.mark.parametrize("command", sorted(set(access.NEEDS) & set(ROLE_FILES)))
def test_the_documented_role_grants_every_right_doctor_asks_for(command: str) -> None:
    # A user bound to docs/rbac/<command>.yaml must not be told they lack a right.
    asked = {_as_rbac(right) for right in access.NEEDS[command]}
    role = load_role(command)
    assert asked - role.rules == set(), f"{command}: doctor asks for more than its Role"
    # And doctor asks for every right of a normal run (the rare ones aside).
    assert role.rules - role.sometimes_used - asked == set(), f"{command}: doctor misses"
