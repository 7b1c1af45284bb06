"""The names of one kind's objects, kept current by a list and then a watch.

connect's DNS server answers `svc` and `svc.ns` only for Services and
namespaces that exist; a Service created a moment ago must resolve at once,
not after the next poll. So: list once (what exists, and the resourceVersion
to watch from: no gap, no repeat), then watch; on Gone (the version was
compacted away) or a failure, list again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Self

from ktpy.cluster.api import (
    ApiError,
    ClusterApi,
    Gone,
    Kind,
    WatchEventType,
    changes,
    watching,
)
from ktpy.errors import KtpyError
from ktpy.logs import get_logger

WATCH_SECONDS = 60  # the server ends each watch after this; it is started again
MIN_WATCH_SECONDS = 1.0  # a watch that ends sooner is not restarted at once (no busy loop)
MAX_BACKOFF = 10.0

log = get_logger("ktpy.known")


class KnownNames:
    """Names of `kind` in `namespace` (None: cluster-wide). `on_change` gets the whole
    set, from the watch thread, after each change."""

    def __init__(
        self,
        api: ClusterApi,
        kind: Kind,
        namespace: str | None,
        on_change: Callable[[frozenset[str]], None] = lambda _names: None,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.on_change = on_change
        self.names: frozenset[str] = frozenset()
        self._version = ""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"known-{kind}", daemon=True)

    def list(self) -> frozenset[str]:
        """List now (raises Forbidden and the like): the starting point of the watch."""
        listed = self.api.list_objects(self.kind, self.namespace)
        self.names = frozenset(str(item["metadata"]["name"]) for item in listed.items)
        self._version = listed.resource_version
        return self.names

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                self._watch_once()
                failures = 0
                if self._stopped.wait(MIN_WATCH_SECONDS - (time.monotonic() - started)):
                    return
            except Gone:
                self._relist()
            except (ApiError, KtpyError, OSError) as exc:
                failures += 1
                log.debug("watch failed; will list again", kind=self.kind, reason=str(exc))
                if self._stopped.wait(min(0.5 * 2**failures, MAX_BACKOFF)):
                    return
                self._relist()

    def _relist(self) -> None:
        before = self.names
        with contextlib.suppress(ApiError, KtpyError, OSError):
            self.list()
            if self.names != before:
                self.on_change(self.names)

    def _resume_at(self, version: str) -> None:
        self._version = version

    def _watch_once(self) -> None:
        options = {"resource_version": self._version, "timeout_seconds": WATCH_SECONDS}
        with watching(self.api, self.kind, self.namespace, **options) as events:
            for event in changes(events, self._resume_at, self._stopped.is_set):
                name = str(event.object["metadata"]["name"])
                if event.type is WatchEventType.DELETED:
                    names = self.names - {name}
                else:
                    names = self.names | {name}
                if names != self.names:
                    self.names = names
                    self.on_change(names)
