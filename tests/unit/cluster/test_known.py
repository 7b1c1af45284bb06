"""KnownNames: list, then watch from the list's version; list again when the watch
cannot go on."""

from __future__ import annotations

import time

from ktpy.cluster.api import Kind, ServerError
from ktpy.cluster.known import KnownNames
from tests.unit.fakes import FakeCluster


def _service(name: str, namespace: str = "dev") -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"ports": []}}


def test_the_list_is_the_starting_point() -> None:
    cluster = FakeCluster()
    cluster.put(Kind.SERVICE, _service("nginx"))
    cluster.put(Kind.SERVICE, _service("other", namespace="elsewhere"))
    assert KnownNames(cluster, Kind.SERVICE, "dev").list() == {"nginx"}


def test_changes_after_the_list_are_seen_once_each() -> None:
    cluster = FakeCluster()
    cluster.put(Kind.SERVICE, _service("nginx"))
    seen: list[frozenset[str]] = []
    known = KnownNames(cluster, Kind.SERVICE, "dev", seen.append)
    known.list()
    cluster.put(Kind.SERVICE, _service("api"))
    cluster.delete(Kind.SERVICE, "dev", "nginx")
    cluster.put(Kind.SERVICE, _service("late", namespace="elsewhere"))
    known._watch_once()
    assert seen == [frozenset({"nginx", "api"}), frozenset({"api"})]
    known._watch_once()  # from the last version: nothing again
    assert len(seen) == 2


def test_a_compacted_version_means_listing_again() -> None:
    cluster = FakeCluster()
    seen: list[frozenset[str]] = []
    known = KnownNames(cluster, Kind.SERVICE, "dev", seen.append)
    known.list()
    cluster.put(Kind.SERVICE, _service("api"))
    cluster.compacted_before = 10**6  # every watch from an older version is Gone
    known._relist()
    assert seen == [frozenset({"api"})]
    assert known.names == {"api"}


def test_the_thread_survives_a_failing_watch_and_stops_when_asked() -> None:
    cluster = FakeCluster()
    known = KnownNames(cluster, Kind.SERVICE, "dev")
    known.list()
    cluster.fail_next("watch", Kind.SERVICE, ServerError("boom"))
    seen: list[frozenset[str]] = []
    known.on_change = seen.append
    known.start()
    cluster.put(Kind.SERVICE, _service("api"))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    known.stop()
    assert seen
    assert seen[-1] == {"api"}
