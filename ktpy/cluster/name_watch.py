"""The names of one kind's objects, kept current by a list and then a watch.

connect's DNS server answers `svc` and `svc.ns` only for Services and
namespaces that exist; a Service created a moment ago must resolve at once,
not after the next poll. So: list once (what exists, and the resourceVersion
to watch from: no gap, no repeat), then watch; on Gone (the version was
compacted away) or a failure, list again. The API's watch helper (``follow``)
does all of that; this module keeps the set of names and says when it changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Self

from ktpy.cluster.api import ClusterApi, Kind, ListResult, follow
from ktpy.logs import get_logger

WATCH_SECONDS = 60  # the server ends each watch after this; it is started again
MIN_WATCH_SECONDS = 1.0  # a watch that ends sooner is not restarted at once (no busy loop)

log = get_logger("ktpy.name_watch")


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
        self._listed: ListResult | None = None  # where the watch starts
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"known-{kind}", daemon=True)

    def list(self) -> frozenset[str]:
        """List now (raises Forbidden and the like): the starting point of the watch."""
        self._listed = self.api.list_objects(self.kind, self.namespace)
        self.names = frozenset(str(item["metadata"]["name"]) for item in self._listed.items)
        return self.names

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        for _ in self.steps():
            pass

    def steps(self) -> Iterator[None]:
        """Follow the names; one step per list or change (the thread takes them all,
        a test one by one)."""

        def retry(exc: Exception, _failures: int) -> bool:
            log.debug("watch failed; will list again", kind=self.kind, reason=str(exc))
            return True

        listed, self._listed = self._listed, None
        followed = follow(
            self.api,
            self.kind,
            self.namespace,
            stop=self._stopped.is_set,
            listed=listed,
            watch_seconds=WATCH_SECONDS,
            retry=retry,
            pause=self._stopped.wait,
            min_watch_seconds=MIN_WATCH_SECONDS,
        )
        for objects in followed:
            names = frozenset(objects)
            if names != self.names:
                self.names = names
                self.on_change(names)
            yield
