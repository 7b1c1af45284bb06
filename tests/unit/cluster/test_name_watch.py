"""KnownNames: list, then watch from the list's version; list again when the watch
cannot go on."""

from __future__ import annotations

import itertools
import time

from ktpy.cluster.api import Kind, ServerError
from ktpy.cluster.name_watch import KnownNames
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
    steps = known.steps()
    for _ in itertools.islice(steps, 3):  # the list, then the two changes in "dev"
        pass
    assert seen == [frozenset({"nginx", "api"}), frozenset({"api"})]
    cluster.put(Kind.SERVICE, _service("x"))
    next(steps)  # from the last version: only the new change
    assert seen[2:] == [frozenset({"api", "x"})]


def test_a_compacted_version_means_listing_again() -> None:
    cluster = FakeCluster()
    seen: list[frozenset[str]] = []
    known = KnownNames(cluster, Kind.SERVICE, "dev", seen.append)
    known.list()
    cluster.put(Kind.SERVICE, _service("api"))
    cluster.compacted_before = 10**6  # every watch from an older version is Gone
    steps = known.steps()
    for _ in itertools.islice(steps, 2):  # the list it had, then Gone: listed again
        pass
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
