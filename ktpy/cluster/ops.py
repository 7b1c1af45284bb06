"""Small compound operations over the ClusterApi, shared by the session and the commands."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ktpy.cluster.api import ApiError, ClusterApi, Kind, NotFound
from ktpy.errors import KtpyError


def wait_gone(
    api: ClusterApi, objects: Iterable[tuple[Kind, str, str, str | None]], timeout: float = 20.0
) -> bool:
    """Wait until each (kind, namespace, name, uid) no longer exists (or the name now
    belongs to another object). True if all went within the timeout."""
    deadline = time.monotonic() + timeout
    for kind, namespace, name, uid in objects:
        while True:
            try:
                current = api.get(kind, namespace, name)
            except NotFound:
                break
            except (ApiError, KtpyError):
                return False
            if uid is not None and current["metadata"].get("uid") != uid:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
    return True
