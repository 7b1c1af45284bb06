"""The life of every session command (connect, exchange, preview, forward):
signals, start, the ready lines, wait, ordered teardown, and why it stopped.

kopf's ``_core/reactor/running.py`` is the model: one skeleton runs every
command, and a command only fills in its parts (``SessionCommand``): what to
bind before anything changes, what to start once the tunnel is up, the lines
that say it is ready, a failure of its own parts, and how to undo them. The
skeleton always undoes the command's parts first, then the session (its
objects, newest first), and ends with one line saying what was undone.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import NoReturn

import click

from ktpy.durations import format_duration
from ktpy.errors import Interrupted, KtpyError
from ktpy.session import Created, Session

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SIGNAL_WORDS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Lifecycle:
    """SIGINT, SIGTERM and SIGHUP stop a long-running command in order.

    While the command starts up, the first signal raises (the start-up code
    undoes what it made on the way out); once running, it sets `stopping` and
    the command tears down. A second signal sets `hurry`: skip waits, still restore.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.hurry = False
        self.signum: int | None = None
        self._starting = True

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            self.hurry = True
            return
        self.signum = signum
        self.stopping.set()
        if self._starting:
            raise Interrupted.for_signal(signum)

    @contextmanager
    def installed(self) -> Iterator[Lifecycle]:
        previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def running(self) -> None:
        """Start-up is over: signals now ask for an orderly stop."""
        self._starting = False

    def hurried(self) -> bool:
        return self.hurry

    def wait(self, check: Callable[[], None]) -> None:
        """Block until a signal, or until ``check`` raises (the session or a part is lost)."""
        while not self.stopping.wait(0.5):
            check()

    def stop_reason(self, ending: str | None = None) -> Interrupted:
        return Interrupted.for_signal(self.signum or signal.SIGINT, ending)


class SessionCommand:
    """The parts a session command fills in; each default does nothing."""

    # After a failed start, undo without waiting for the shadow pod to go. A command
    # whose start may already have sent callers to the shadow (exchange) waits instead.
    hurry_after_failed_start = True

    def bind(self, session: Session) -> None:
        """Before the cluster is touched: e.g. listen on local ports, so a busy port
        fails before anything is created."""

    def start(self, session: Session) -> None:
        """Once the shadow pod serves and the tunnel is up."""

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        """What to print once running, after the shadow line (the ready line last)."""
        return []

    def check(self, session: Session) -> None:
        """Raise the KtpyError of a part of this command that failed while running.
        The default: the session's own loss."""
        if session.lost.is_set():
            raise session.lost_error(session.lost_reason)

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        """Undo this command's parts (before the session's objects go), newest first.
        Returns what was undone, in words, for the last line."""
        return []


def shadow_line(session: Session) -> str:
    """The first line every command prints once its shadow pod serves."""
    spec = session.spec
    return f"Shadow pod {spec.pod_name} in namespace {spec.namespace} (session {session.id})"


def ending_line(signum: int, undone: list[str], deleted: list[Created], since: float) -> str:
    """One line: which signal stopped the command after how long, and what was undone."""
    words = list(undone)
    if deleted:
        words.append("deleted " + ", ".join(f"{o.kind.value.lower()}/{o.name}" for o in deleted))
    what = "; ".join(words) if words else "nothing to undo"
    after = format_duration(timedelta(seconds=round(time.monotonic() - since)))
    by = _SIGNAL_WORDS.get(signal.Signals(signum), f"signal {signum}")
    return f"Stopped by {by} after {after}: {what}."


def run(session: Session, command: SessionCommand, *, started: float) -> NoReturn:
    """Run a session command from start to its stop; always raises (Interrupted on a
    signal, the reason otherwise)."""
    lifecycle = Lifecycle()
    with lifecycle.installed():
        try:
            command.bind(session)
            session.start()
            command.start(session)
        except BaseException:
            _teardown(session, command, lifecycle, failed=True)
            raise
        lifecycle.running()
        try:
            click.echo(shadow_line(session))
            for warning in session.warnings:
                click.echo(f"Warning: {warning}", err=True)
            for line in command.ready_lines(session, time.monotonic() - started):
                click.echo(line)
            lifecycle.wait(lambda: command.check(session))
        except BaseException:
            _teardown(session, command, lifecycle, failed=False)
            raise
        undone, deleted = _teardown(session, command, lifecycle, failed=False)
        signum = lifecycle.signum or signal.SIGINT
    raise lifecycle.stop_reason(ending_line(signum, undone, deleted, started))


def _teardown(
    session: Session, command: SessionCommand, lifecycle: Lifecycle, *, failed: bool
) -> tuple[list[str], list[Created]]:
    """The command's parts first, then the session's objects, whatever fails."""
    undone: list[str] = []
    try:
        undone = command.stop(session, lifecycle.hurried)
    except KtpyError as exc:
        click.echo(f"Could not undo everything: {exc}", err=True)
    finally:
        hurry = lifecycle.hurry or (failed and command.hurry_after_failed_start)
        deleted = session.close(hurry=hurry)
    return undone, deleted
