"""The rights each command needs, asked once each (SelfSubjectAccessReview bodies)."""

from __future__ import annotations

from ktpy.cluster import access
from ktpy.cluster.access import Right


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
