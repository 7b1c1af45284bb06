"""The one skeleton of every session command: order of start and teardown, the
ending line, failures during start and while running."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest

from ktpy import lifecycle
from ktpy.cluster.api import Kind
from ktpy.errors import Interrupted, KtpyError, SessionLost
from ktpy.session import Created, Session


class FakeSession:
    """What the skeleton uses of a Session: start, close, lost, spec, id, warnings."""

    def __init__(self, calls: list[str], fail_start: bool = False) -> None:
        self.calls = calls
        self.fail_start = fail_start
        self.lost = threading.Event()
        self.lost_reason = ""
        self.lost_error = SessionLost
        self.id = "ab12cd34"
        self.spec = type("Spec", (), {"pod_name": "web-kt-abcde", "namespace": "dev"})()
        self.warnings: list[str] = []

    def start(self) -> None:
        self.calls.append("session.start")
        if self.fail_start:
            raise KtpyError("the pod would not start")

    def close(self, *, hurry: bool = False) -> list[Created]:
        self.calls.append(f"session.close(hurry={hurry})")
        return [
            Created(Kind.SERVICE, "dev", "web", "u1"),
            Created(Kind.POD, "dev", "web-kt-abcde", "u2"),
        ]


class Recording(lifecycle.SessionCommand):
    def __init__(self, calls: list[str], on_ready: Callable[[FakeSession], None]) -> None:
        self.calls = calls
        self.on_ready = on_ready

    def bind(self, session: Session) -> None:
        self.calls.append("bind")

    def start(self, session: Session) -> None:
        self.calls.append("start")

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        self.calls.append("ready")
        self.on_ready(cast(Any, session))
        return ["All looks good"]

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        self.calls.append("stop")
        return ["restored the selector of service web"]


def run(session: FakeSession, command: lifecycle.SessionCommand) -> BaseException:
    try:
        lifecycle.run(cast(Session, session), command, started=0.0)
    except (KtpyError, SessionLost) as exc:  # Interrupted is a KtpyError too
        return exc
    raise AssertionError("run always raises")


def test_ctrl_c_undoes_the_command_then_the_session_and_says_what_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[str] = []
    session = FakeSession(calls)
    stopped = run(session, Recording(calls, lambda _: os.kill(os.getpid(), signal.SIGINT)))
    assert calls == [
        "bind",
        "session.start",
        "start",
        "ready",
        "stop",
        "session.close(hurry=False)",
    ]
    assert isinstance(stopped, Interrupted)
    assert stopped.exit_code == 130
    assert stopped.ending is not None
    assert stopped.ending.startswith("Stopped by Ctrl-C after ")
    assert stopped.ending.endswith(
        ": restored the selector of service web; deleted service/web, pod/web-kt-abcde."
    )
    stopped.show()
    err = capsys.readouterr().err.splitlines()
    assert err == [stopped.ending]  # the ending replaces "Error: stopped by SIGINT"
    out = capsys.readouterr().out
    assert "Error" not in out


def test_sigterm_is_named_and_keeps_its_exit_code() -> None:
    calls: list[str] = []
    stopped = run(
        FakeSession(calls), Recording(calls, lambda _: os.kill(os.getpid(), signal.SIGTERM))
    )
    assert isinstance(stopped, Interrupted)
    assert stopped.exit_code == 143
    assert stopped.ending is not None
    assert stopped.ending.startswith("Stopped by SIGTERM after ")


def test_a_failed_start_undoes_in_a_hurry_and_raises_the_failure() -> None:
    calls: list[str] = []
    failed = run(FakeSession(calls, fail_start=True), Recording(calls, lambda _: None))
    assert isinstance(failed, KtpyError)
    assert "would not start" in str(failed)
    assert calls == ["bind", "session.start", "stop", "session.close(hurry=True)"]


def test_a_command_whose_start_may_have_moved_traffic_tears_down_without_hurry() -> None:
    calls: list[str] = []
    command = Recording(calls, lambda _: None)
    command.hurry_after_failed_start = False
    run(FakeSession(calls, fail_start=True), command)
    assert calls[-1] == "session.close(hurry=False)"


def test_a_lost_session_stops_with_its_reason_after_undoing() -> None:
    calls: list[str] = []

    def lose(session: FakeSession) -> None:
        session.lost_reason = "shadow pod web-kt-abcde is gone"
        session.lost.set()

    lost = run(FakeSession(calls), Recording(calls, lose))
    assert isinstance(lost, SessionLost)
    assert "is gone" in str(lost)
    assert calls[-2:] == ["stop", "session.close(hurry=False)"]
