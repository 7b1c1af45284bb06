"""The tunnel supervisor's reconnect loop: API errors while reconnecting are tried
again, not the end of the supervisor (a 404 or 500 from the port-forward while a
kubelet restarts or the shadow pod is replaced)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ktpy.cluster.api import NotFound, ServerError
from ktpy.cluster.labels import Role
from ktpy.logs import get_logger
from ktpy.session import link as link_module
from ktpy.session.link import TunnelLink
from ktpy.session.shadow import ShadowSpec


def test_api_errors_while_reconnecting_are_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "CHECK_EVERY", 0.01)
    monkeypatch.setattr(link_module, "RECONNECT_BACKOFF", (0.01,))
    spec = ShadowSpec(role=Role.CONNECT, namespace="dev", pod_name="p", image="i")
    link = TunnelLink(None, spec, None, get_logger("test"), threading.Event())  # type: ignore[arg-type]
    stop = threading.Event()
    failures = [NotFound("pod does not exist"), ServerError("container not found")]
    attempts: list[bool] = []

    def connect(*, again: bool = False) -> None:
        attempts.append(again)
        if failures:
            raise failures.pop(0)
        stop.set()  # the third attempt went through: enough

    link.connect = connect  # type: ignore[method-assign]
    lost: list[Any] = []
    link.supervise(stop, lambda reason, error: lost.append(reason))
    assert attempts == [True, True, True]
    assert lost == []
