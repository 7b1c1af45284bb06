import copy
import json
from datetime import UTC, datetime

import pytest

from ktpy.cluster import labels, modify
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.modify import ABSENT, AlreadyModified, FieldChange, NotModified
from tests.unit.cluster.objects import user_service

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
SHADOW_SELECTOR = {"ktpy.dev/role": "exchange", "ktpy.dev/session": "s1"}
LOCK = Lock("s1", "alice@lap", Role.EXCHANGE, NOW)


def exchange(service: dict[str, object]) -> dict[str, object]:
    return modify.modified_body(
        service, [FieldChange(("spec", "selector"), SHADOW_SELECTOR)], session_id="s1", lock=LOCK
    )


def test_modification_changes_the_field_and_records_the_original() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    changed = exchange(service)
    assert changed["spec"]["selector"] == SHADOW_SELECTOR  # type: ignore[index]
    meta = changed["metadata"]
    assert meta["labels"][labels.MODIFIED_BY] == "s1"  # type: ignore[index]
    originals = json.loads(meta["annotations"][labels.ORIGINAL])  # type: ignore[index]
    assert originals == [
        {
            "path": "/spec/selector",
            "value": {"app": "nginx", "tier": "web"},
            "set": SHADOW_SELECTOR,  # a restore puts the original back only over this
        }
    ]
    assert Lock.decode(meta["annotations"][labels.LOCK]) == LOCK  # type: ignore[index]
    assert meta["resourceVersion"] == "41"  # type: ignore[index]


def test_the_input_is_not_mutated() -> None:
    service = user_service()
    before = copy.deepcopy(service)
    exchange(service)
    assert service == before


def test_restore_gives_back_the_original_exactly() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    restored = modify.restored_body(exchange(service))
    assert restored == service


def test_restore_of_an_object_without_annotations_drops_the_empty_maps() -> None:
    service = user_service()
    del service["metadata"]["labels"]
    restored = modify.restored_body(exchange(service))
    assert restored == service
    assert "annotations" not in restored["metadata"]


def test_a_field_that_was_absent_is_removed_again() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {}}
    changed = modify.modified_body(
        deployment, [FieldChange(("spec", "replicas"), 0)], session_id="s1"
    )
    assert changed["spec"]["replicas"] == 0
    assert labels.LOCK not in changed["metadata"]["annotations"]
    assert modify.restored_body(changed) == deployment


def test_replicas_come_back() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}}
    changed = modify.modified_body(
        deployment, [FieldChange(("spec", "replicas"), 0)], session_id="s1"
    )
    assert modify.restored_body(changed)["spec"]["replicas"] == 3


def managed(manager: str, time: str, *path: str) -> dict[str, object]:
    fields: dict[str, object] = {}
    for part in reversed(path):
        fields = {f"f:{part}": fields}
    return {"manager": manager, "operation": "Update", "time": time, "fieldsV1": fields}


def test_someone_elses_edit_to_the_field_is_left_as_they_set_it_and_named() -> None:
    changed = exchange(user_service())
    changed["spec"]["selector"] = {"someone": "else"}  # type: ignore[index]
    changed["metadata"]["managedFields"] = [  # type: ignore[index]
        managed("helm", "2026-11-27T12:00:00Z", "spec", "selector", "app"),
        managed("ktpy", "2026-11-27T12:00:05Z", "spec", "selector", "ktpy.dev/role"),
        managed("argocd-controller", "2026-11-27T12:00:09Z", "spec", "selector", "someone"),
        managed("kubectl-edit", "2026-11-27T12:00:30Z", "metadata", "annotations"),
    ]
    restored = modify.restore_plan(changed)
    assert restored.body["spec"]["selector"] == {"someone": "else"}
    assert restored.left == (modify.LeftField("/spec/selector", "argocd-controller"),)
    assert labels.ORIGINAL not in restored.body["metadata"].get("annotations", {})
    assert labels.MODIFIED_BY not in restored.body["metadata"].get("labels", {})


def test_a_record_without_ktpys_value_is_restored_whatever_the_field_holds() -> None:
    """Records written before ktpy kept its own value: the original comes back."""
    changed = exchange(user_service())
    annotations = changed["metadata"]["annotations"]  # type: ignore[index]
    entries = json.loads(annotations[labels.ORIGINAL])
    annotations[labels.ORIGINAL] = json.dumps(
        [{k: e[k] for k in ("path", "value")} for e in entries]
    )
    changed["spec"]["selector"] = {"someone": "else"}  # type: ignore[index]
    assert modify.restore_plan(changed) == modify.Restored(modify.restored_body(changed), left=())
    assert modify.restored_body(changed)["spec"]["selector"] == {"app": "nginx"}


def test_an_adopted_value_is_what_the_restore_gives_back_and_names() -> None:
    changed = exchange(user_service())
    adopted = modify.adopt(changed, ("spec", "selector"), {"app": "v2"}, "helm")
    assert adopted["spec"]["selector"] == SHADOW_SELECTOR  # ktpy's value stays in place
    restored = modify.restore_plan(adopted)
    assert restored.body["spec"]["selector"] == {"app": "v2"}
    assert restored.left == (modify.LeftField("/spec/selector", "helm", adopted=True),)


def test_other_edits_survive_the_restore() -> None:
    changed = exchange(user_service())
    changed["metadata"]["annotations"]["team"] = "web"  # type: ignore[index]
    changed["metadata"]["resourceVersion"] = "99"  # type: ignore[index]
    restored = modify.restored_body(changed)
    assert restored["metadata"]["annotations"] == {"team": "web"}
    assert restored["metadata"]["resourceVersion"] == "99"


def test_an_already_modified_object_is_refused_with_its_holder() -> None:
    with pytest.raises(AlreadyModified, match="session s1") as caught:
        modify.modified_body(
            exchange(user_service()), [FieldChange(("spec", "selector"), {})], session_id="s2"
        )
    assert caught.value.lock == LOCK


def test_nothing_to_restore_is_refused() -> None:
    with pytest.raises(NotModified):
        modify.restored_body(user_service())


def test_no_changes_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to change"):
        modify.modified_body(user_service(), [], session_id="s1")


def test_a_lock_alone_counts_as_modified() -> None:
    service = user_service()
    service["metadata"]["annotations"] = {labels.LOCK: LOCK.encode()}
    assert modify.is_modified(service)
    assert modify.modifier_session(service) == "s1"
    assert modify.restored_body(service)["metadata"].get("annotations") is None


def test_unreadable_originals_are_an_error_not_a_guess() -> None:
    changed = exchange(user_service())
    changed["metadata"]["annotations"][labels.ORIGINAL] = "{broken"  # type: ignore[index]
    with pytest.raises(ValueError, match="unreadable"):
        modify.restored_body(changed)


def test_pointer_escaping_round_trips() -> None:
    change = FieldChange(("metadata", "annotations", "a/b~c"), "x")
    assert change.pointer == "/metadata/annotations/a~1b~0c"
    body = {"metadata": {"name": "n"}}
    changed = modify.modified_body(body, [change], session_id="s1")
    assert changed["metadata"]["annotations"]["a/b~c"] == "x"
    assert modify.restored_body(changed) == body


def test_absent_is_a_singleton_with_a_readable_repr() -> None:
    assert repr(ABSENT) == "ABSENT"
    assert type(ABSENT)() is ABSENT
