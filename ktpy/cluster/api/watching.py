"""The one watch helper: every wait and every follower of objects watches
through here (kopf's ``_cogs/clients/watching.py`` is the model).

- ``watching``: ``api.watch`` whose stream is closed however the block ends;
- ``changes``: the events of a stream that change something, resume version
  recorded from every event;
- ``follow``: list, then watch from the list's version (no gap, no repeat),
  listing again on 410 Gone; yields the current objects by name after the
  list and after each change;
- ``wait_until``: ``follow`` until a condition over the objects holds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from ktpy.cluster.api.errors import ApiError, Gone
from ktpy.cluster.api.kinds import Kind
from ktpy.cluster.api.protocol import ClusterApi, ListResult, WatchEvent, WatchEventType
from ktpy.cluster.bodies import JsonObject
from ktpy.errors import KtpyError

# Waits use short watches so that a request to stop is seen within this many seconds.
STOPPABLE_WATCH_SECONDS = 2
MAX_BACKOFF = 10.0  # seconds between a long-lived follower's attempts after failures


@contextlib.contextmanager
def watching(
    api: ClusterApi, kind: Kind, namespace: str | None, **options: Any
) -> Iterator[Iterator[WatchEvent]]:
    """api.watch(...) whose stream is closed when the block ends, however it ends
    (a watch left open holds a connection of the pool until the server's timeout)."""
    events = api.watch(kind, namespace, **options)
    try:
        yield events
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def changes(
    events: Iterable[WatchEvent], at: Callable[[str], None], stopped: Callable[[], bool]
) -> Iterator[WatchEvent]:
    """The events that change something, until stopped() is true. Every event's
    resourceVersion goes to `at` first, bookmarks' too: they move the point a
    later watch resumes from."""
    for event in events:
        if stopped():
            return
        if event.resource_version:
            at(event.resource_version)
        if event.type is not WatchEventType.BOOKMARK:
            yield event


def _never() -> bool:
    return False


def follow(
    api: ClusterApi,
    kind: Kind,
    namespace: str | None,
    *,
    label_selector: str = "",
    field_selector: str = "",
    stop: Callable[[], bool] = _never,
    deadline: float | None = None,
    watch_seconds: int = 60,
    listed: ListResult | None = None,
    retry: Callable[[Exception, int], bool] | None = None,
    pause: Callable[[float], object] = time.sleep,
    min_watch_seconds: float = 0.0,
) -> Generator[dict[str, JsonObject], None, None]:
    """The objects of ``kind`` that the selectors pick, by name: yielded once listed
    and again after every change, until ``stop()``, the ``deadline`` (monotonic), or
    the caller stops iterating.

    ``listed``: start from this list instead of listing. ``retry(exc, failures)``:
    for a follower that must outlive a failed list or watch (an API error, a
    dropped connection): True to list again after a backoff of ``pause`` (stop
    it early by making ``pause`` return when stopped); without it errors raise.
    ``watch_seconds`` bounds each watch, so ``stop()`` is seen at least that often
    when nothing changes; a watch that ends before ``min_watch_seconds`` is not
    restarted at once (no busy loop against a server that closes at once).
    """
    failures = 0
    while not stop():
        try:
            if listed is None:
                listed = api.list_objects(
                    kind, namespace, label_selector=label_selector, field_selector=field_selector
                )
            objects = {str(b["metadata"]["name"]): b for b in listed.items}
            version = listed.resource_version
            listed = None
            yield objects

            def resume_at(seen: str) -> None:
                nonlocal version
                version = seen

            while not stop():
                seconds = watch_seconds
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    seconds = max(1, min(int(remaining + 0.999), watch_seconds))
                started = time.monotonic()
                with watching(
                    api,
                    kind,
                    namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    resource_version=version,
                    timeout_seconds=seconds,
                ) as events:
                    for event in changes(events, resume_at, stop):
                        name = str(event.object["metadata"]["name"])
                        if event.type is WatchEventType.DELETED:
                            objects.pop(name, None)
                        else:
                            objects[name] = event.object
                        failures = 0
                        yield objects
                        if deadline is not None and time.monotonic() >= deadline:
                            return
                short = min_watch_seconds - (time.monotonic() - started)
                if short > 0 and not stop():
                    pause(short)
        except Gone:
            continue  # the version was compacted away: list again
        except (ApiError, KtpyError, OSError) as exc:
            failures += 1
            if retry is None or not retry(exc, failures):
                raise
            pause(min(0.5 * 2**failures, MAX_BACKOFF))
        if deadline is not None and time.monotonic() >= deadline:
            return


def wait_until(
    api: ClusterApi,
    kind: Kind,
    namespace: str | None,
    done: Callable[[dict[str, JsonObject]], bool],
    *,
    timeout: float,
    label_selector: str = "",
    field_selector: str = "",
    stop: Callable[[], bool] = _never,
) -> bool:
    """Follow the objects until ``done(objects)``: True, or False at the timeout or
    once ``stop()``. Watches are short (2 s), so a stop is seen within about that."""
    followed = follow(
        api,
        kind,
        namespace,
        label_selector=label_selector,
        field_selector=field_selector,
        stop=stop,
        deadline=time.monotonic() + timeout,
        watch_seconds=STOPPABLE_WATCH_SECONDS,
    )
    with contextlib.closing(followed):  # the open watch is closed as soon as done holds
        return any(done(objects) for objects in followed)


def wait_gone(
    api: ClusterApi, objects: Iterable[tuple[Kind, str, str, str | None]], timeout: float = 20.0
) -> bool:
    """Wait until each (kind, namespace, name, uid) no longer exists (or the name now
    belongs to another object). True if all went within the timeout; False also if
    the API cannot tell (the caller goes on either way)."""
    deadline = time.monotonic() + timeout
    for kind, namespace, name, uid in objects:

        def gone(found: dict[str, JsonObject], name: str = name, uid: str | None = uid) -> bool:
            body = found.get(name)
            return body is None or (uid is not None and body["metadata"].get("uid") != uid)

        try:
            if not wait_until(
                api,
                kind,
                namespace,
                gone,
                timeout=max(deadline - time.monotonic(), 0.001),
                field_selector=f"metadata.name={name}",
            ):
                return False
        except (ApiError, KtpyError, OSError):
            return False
    return True
