from datetime import UTC, datetime, timedelta

import pytest

from ktpy.cluster.heartbeat import (
    HeartbeatPolicy,
    Liveness,
    LocalProcess,
    ObjectRef,
    SessionView,
    parse_http_date,
    sessions_from_objects,
)
from ktpy.cluster.labels import PidStart, Role
from tests.unit.cluster.objects import created, user_service

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
STALE_AFTER = timedelta(minutes=3)
PID = PidStart(4242, 99, "boot-a")


class TestHttpDate:
    @pytest.mark.parametrize(
        "value",
        [
            "Fri, 27 Nov 2026 12:00:00 GMT",
            "Friday, 27-Nov-26 12:00:00 GMT",
            "Fri Nov 27 12:00:00 2026",
        ],
    )
    def test_all_three_http_forms(self, value: str) -> None:
        assert parse_http_date(value) == NOW

    def test_result_is_utc_aware(self) -> None:
        assert parse_http_date("Fri, 27 Nov 2026 12:00:00 GMT").tzinfo is UTC

    @pytest.mark.parametrize("value", ["", "yesterday", "Fri, 99 Nov 2026 12:00:00 GMT"])
    def test_garbage(self, value: str) -> None:
        with pytest.raises(ValueError, match="not an HTTP date"):
            parse_http_date(value)


class TestPolicy:
    def test_defaults(self) -> None:
        policy = HeartbeatPolicy()
        assert policy.interval == timedelta(seconds=30)
        assert policy.stale_after == timedelta(minutes=3)

    def test_stale_after_under_twice_the_interval_is_refused(self) -> None:
        with pytest.raises(ValueError, match="less than twice"):
            HeartbeatPolicy(interval=timedelta(seconds=30), stale_after=timedelta(seconds=59))
        assert HeartbeatPolicy(timedelta(seconds=30), timedelta(seconds=60))

    def test_interval_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            HeartbeatPolicy(interval=timedelta(0))


class TestSessionsFromObjects:
    def test_groups_by_namespace_and_session(self) -> None:
        objects = [
            created("Pod", "kt-connect-shadow-aaaaa", "s1", heartbeat=NOW),
            created("Secret", "kt-connect-shadow-aaaaa", "s1", heartbeat=NOW),
            created("Pod", "kt-connect-shadow-bbbbb", "s2", heartbeat=NOW),
            created("Pod", "kt-connect-shadow-ccccc", "s1", namespace="other", heartbeat=NOW),
            user_service(),
        ]
        views = sessions_from_objects(objects)
        assert [(v.namespace, v.session_id, len(v.objects)) for v in views] == [
            ("dev", "s1", 2),
            ("dev", "s2", 1),
            ("other", "s1", 1),
        ]
        assert views[0].objects[0] == ObjectRef(
            "Pod", "dev", "kt-connect-shadow-aaaaa", "uid-kt-connect-shadow-aaaaa"
        )

    def test_newest_heartbeat_and_oldest_creation_count(self) -> None:
        old, new = NOW - timedelta(minutes=10), NOW - timedelta(minutes=1)
        objects = [
            created("Pod", "p", "s1", heartbeat=old, created_at=NOW - timedelta(hours=1)),
            created("Secret", "p", "s1", heartbeat=new, created_at=NOW - timedelta(hours=2)),
        ]
        (view,) = sessions_from_objects(objects)
        assert view.heartbeat == new
        assert view.created == NOW - timedelta(hours=2)
        assert view.age(NOW) == timedelta(hours=2)
        assert view.heartbeat_age(NOW) == timedelta(minutes=1)

    def test_main_role_is_the_shadows(self) -> None:
        objects = [
            created("Pod", "nginx-kt-router", "s1", role=Role.ROUTER, heartbeat=NOW),
            created("Service", "nginx-kt-stuntman", "s1", role=Role.STUNTMAN, heartbeat=NOW),
            created("Pod", "nginx-kt-mesh-blue", "s1", role=Role.MESH, heartbeat=NOW),
        ]
        (view,) = sessions_from_objects(objects)
        assert view.role is Role.MESH

    def test_a_forward_session_is_one(self) -> None:
        objects = [
            created("Secret", "kt-forward-shadow-abcde", "s1", role=Role.FORWARD, heartbeat=NOW),
            created("Pod", "kt-forward-shadow-abcde", "s1", role=Role.FORWARD, heartbeat=NOW),
        ]
        (view,) = sessions_from_objects(objects)
        assert view.role is Role.FORWARD

    def test_owner_and_pid_start_are_read(self) -> None:
        (view,) = sessions_from_objects(
            [created("Pod", "p", "s1", owner="bob@box", pid_start=PID, heartbeat=NOW)]
        )
        assert view.owner == "bob@box"
        assert view.pid_start == PID

    def test_garbage_annotations_are_tolerated(self) -> None:
        body = created("Pod", "p", "s1", heartbeat=NOW)
        body["metadata"]["annotations"]["ktpy.dev/heartbeat"] = "not a time"
        body["metadata"]["annotations"]["ktpy.dev/pid-start"] = "nonsense"
        body["metadata"]["labels"]["ktpy.dev/role"] = "astronaut"
        (view,) = sessions_from_objects([body])
        assert view.heartbeat is None
        assert view.pid_start is None
        assert view.role is None

    def test_objects_without_a_session_label_are_ignored(self) -> None:
        body = created("Pod", "p", "s1")
        del body["metadata"]["labels"]["ktpy.dev/session"]
        assert sessions_from_objects([body]) == []


class TestLiveness:
    def view(
        self,
        heartbeat: datetime | None,
        pid: PidStart | None = None,
        created_at: datetime | None = None,
    ) -> SessionView:
        (view,) = sessions_from_objects(
            [created("Pod", "p", "s1", heartbeat=heartbeat, pid_start=pid, created_at=created_at)]
        )
        return view

    def test_fresh_is_live_and_old_is_stale(self) -> None:
        assert (
            self.view(NOW - timedelta(minutes=2, seconds=59)).liveness(NOW, STALE_AFTER)
            is Liveness.LIVE
        )
        assert self.view(NOW - timedelta(minutes=3)).liveness(NOW, STALE_AFTER) is Liveness.STALE

    def test_deadline_is_heartbeat_plus_threshold(self) -> None:
        view = self.view(NOW)
        assert view.deadline(STALE_AFTER) == NOW + STALE_AFTER
        assert not view.is_stale(NOW + STALE_AFTER - timedelta(seconds=1), STALE_AFTER)
        assert view.is_stale(NOW + STALE_AFTER, STALE_AFTER)

    def test_creation_time_stands_in_for_a_missing_heartbeat(self) -> None:
        assert self.view(None, created_at=NOW).liveness(NOW, STALE_AFTER) is Liveness.LIVE
        assert (
            self.view(None, created_at=NOW - timedelta(hours=1)).liveness(NOW, STALE_AFTER)
            is Liveness.STALE
        )

    def test_no_time_at_all_is_stale(self) -> None:
        assert self.view(None).liveness(NOW, STALE_AFTER) is Liveness.STALE

    def test_local_process_gone_is_dead_at_once(self) -> None:
        checked: list[PidStart] = []

        def gone(pid: PidStart) -> LocalProcess:
            checked.append(pid)
            return LocalProcess.GONE

        assert self.view(NOW, pid=PID).liveness(NOW, STALE_AFTER, gone) is Liveness.DEAD
        assert checked == [PID]

    def test_local_process_alive_is_live_even_when_stale(self) -> None:
        view = self.view(NOW - timedelta(hours=1), pid=PID)
        assert view.liveness(NOW, STALE_AFTER, lambda _: LocalProcess.ALIVE) is Liveness.LIVE

    def test_another_machines_session_goes_by_its_heartbeat(self) -> None:
        def elsewhere(_: PidStart) -> LocalProcess:
            return LocalProcess.ELSEWHERE

        assert self.view(NOW, pid=PID).liveness(NOW, STALE_AFTER, elsewhere) is Liveness.LIVE
        old = self.view(NOW - timedelta(hours=1), pid=PID)
        assert old.liveness(NOW, STALE_AFTER, elsewhere) is Liveness.STALE
