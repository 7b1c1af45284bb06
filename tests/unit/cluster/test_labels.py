import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ktpy.cluster import labels
from ktpy.cluster.labels import Lock, PidStart, Role

NOW = datetime(2026, 11, 27, 9, 17, 36, tzinfo=UTC)


def test_everything_ktpy_owns_is_under_one_prefix() -> None:
    keys = [
        labels.ROLE,
        labels.SESSION,
        labels.MODIFIED_BY,
        labels.OWNER,
        labels.HEARTBEAT,
        labels.PID_START,
        labels.TARGET,
        labels.ORIGINAL,
        labels.LOCK,
    ]
    assert all(key.startswith("ktpy.dev/") for key in keys)
    assert len(set(keys)) == len(keys)


def test_session_labels_are_valid_label_values() -> None:
    made = labels.session_labels("ab12cd34", Role.EXCHANGE)
    assert made == {
        "app.kubernetes.io/managed-by": "ktpy",
        "ktpy.dev/role": "exchange",
        "ktpy.dev/session": "ab12cd34",
    }
    assert all(labels.is_label_value(value) for value in made.values())


def test_owner_is_an_annotation_because_it_is_not_a_label_value() -> None:
    annotations = labels.session_annotations(owner="alice@laptop", heartbeat=NOW)
    assert annotations[labels.OWNER] == "alice@laptop"
    assert not labels.is_label_value("alice@laptop")
    assert annotations[labels.HEARTBEAT] == "2026-11-27T09:17:36Z"
    assert labels.PID_START not in annotations


def test_optional_annotations() -> None:
    pid = PidStart(4242, 123456, "0f1e2d3c-aaaa-bbbb-cccc-000011112222")
    annotations = labels.session_annotations(
        owner="a@b", heartbeat=NOW, pid_start=pid, target="service/nginx"
    )
    assert annotations[labels.PID_START] == "4242:123456@0f1e2d3c-aaaa-bbbb-cccc-000011112222"
    assert annotations[labels.TARGET] == "service/nginx"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T09:17:36Z", NOW),
        ("2026-11-27T09:17:36.250Z", NOW + timedelta(milliseconds=250)),
        ("2026-11-27T10:17:36+01:00", NOW),
        ("2026-11-27T09:17:36z", NOW),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert labels.parse_time(text) == expected
    assert labels.parse_time(text).tzinfo is UTC


@pytest.mark.parametrize("text", ["2026-11-27T09:17:36", "yesterday", ""])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        labels.parse_time(text)


def test_format_time_converts_to_utc_and_refuses_naive() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert labels.format_time(datetime(2026, 1, 1, 2, 0, tzinfo=plus_two)) == "2026-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="naive"):
        labels.format_time(datetime(2026, 1, 1))


def test_pid_start_round_trip_and_garbage() -> None:
    pid = PidStart(1, 2, "abc-def")
    assert PidStart.parse(str(pid)) == pid
    for bad in ("1:2", "x:2@b", "1:2@", "1:2@B!"):
        with pytest.raises(ValueError, match="pid"):
            PidStart.parse(bad)


def test_pid_start_records_its_namespaces_and_old_records_are_still_read() -> None:
    new = PidStart(4242, 123456, "0f1e-aa", 4026532301, 4026531834, "laptop-8")
    assert str(new) == "4242:123456@0f1e-aa/4026532301/4026531834/laptop-8"
    assert PidStart.parse(str(new)) == new
    odd = PidStart(1, 2, "b", 3, 0, "a/b c")  # the kernel allows any byte in a hostname
    assert PidStart.parse(str(odd)) == odd
    old = PidStart.parse("4242:123456@0f1e-aa")
    assert old == PidStart(4242, 123456, "0f1e-aa")
    assert old.pid_ns is None  # an old record names no namespace


def test_lock_round_trip() -> None:
    lock = Lock(session="ab12cd34", owner="alice@lap", role=Role.EXCHANGE, since=NOW)
    text = lock.encode()
    assert json.loads(text)["owner"] == "alice@lap"
    assert Lock.decode(text) == lock


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "[]",
        '{"session": "x"}',
        "not json",
        '{"session":"a","owner":"b","role":"nope","since":"x"}',
    ],
)
def test_lock_decode_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a ktpy lock"):
        Lock.decode(text)


def test_heartbeat_patch_touches_only_the_heartbeat() -> None:
    assert labels.heartbeat_patch(NOW) == {
        "metadata": {"annotations": {"ktpy.dev/heartbeat": "2026-11-27T09:17:36Z"}}
    }


def test_selectors() -> None:
    assert labels.format_selector({"b": "2", "a": "1"}) == "a=1,b=2"
    assert labels.session_selector("s1") == "app.kubernetes.io/managed-by=ktpy,ktpy.dev/session=s1"
    assert labels.MANAGED_SELECTOR == "app.kubernetes.io/managed-by=ktpy"


@pytest.mark.parametrize(
    ("selector", "pod_labels", "matches"),
    [
        ({"app": "web"}, {"app": "web", "x": "y"}, True),
        ({"app": "web", "tier": "fe"}, {"app": "web"}, False),
        ({"app": "web"}, {"app": "api"}, False),
        ({}, {"app": "web"}, False),
    ],
)
def test_selector_matches(
    selector: dict[str, str], pod_labels: dict[str, str], matches: bool
) -> None:
    assert labels.selector_matches(selector, pod_labels) is matches


def test_shadow_selector_selects_the_shadow() -> None:
    selector = labels.shadow_selector("s1", Role.EXCHANGE)
    assert labels.selector_matches(selector, labels.session_labels("s1", Role.EXCHANGE))
    assert not labels.selector_matches(selector, labels.session_labels("s2", Role.EXCHANGE))


def test_template_labels_lose_pod_template_hash() -> None:
    template = {"app": "web", "pod-template-hash": "5d9c8f7b6"}
    assert labels.shadow_template_labels(template) == {"app": "web"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc", True),
        ("", True),
        ("a.b_c-d", True),
        ("-a", False),
        ("a@b", False),
        ("a" * 64, False),
    ],
)
def test_is_label_value(value: str, ok: bool) -> None:
    assert labels.is_label_value(value) is ok
