"""Wiring shared by the commands: the API client, the local process check, and
the signal-driven lifecycle of a long-running command."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import click

from ktpy.cluster.api import ClusterApi, KubernetesApi, PluginUser
from ktpy.cluster.heartbeat import LocalProcess
from ktpy.cluster.labels import PidStart
from ktpy.config import Settings
from ktpy.errors import Interrupted, SessionLost
from ktpy.host import procs
from ktpy.session import Session

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def shadow_line(session: Session) -> str:
    """The first line every command prints once its shadow pod serves."""
    spec = session.spec
    return f"Shadow pod {spec.pod_name} in namespace {spec.namespace} (session {session.id})"


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the ktpy group sets ctx.obj"
    return settings


def make_api(settings: Settings) -> ClusterApi:
    who = settings.invoker
    plugins_as = PluginUser(who.user, who.uid, who.gid, str(who.home)) if who.via_sudo else None
    return KubernetesApi.from_kubeconfig(
        settings.kubeconfig, settings.context, plugins_as=plugins_as
    )


def check_local_process(pid_start: PidStart) -> LocalProcess:
    """Whether a session's owner process runs on this host (``procs.judge``'s rule)."""
    p = pid_start
    state = procs.state(
        procs.Identity(p.pid, p.start_ticks, p.boot_id, p.pid_ns, p.time_ns, p.hostname)
    )
    return {
        procs.ProcessState.ALIVE: LocalProcess.ALIVE,
        procs.ProcessState.GONE: LocalProcess.GONE,
    }.get(state, LocalProcess.ELSEWHERE)


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

    def wait(self, lost: threading.Event, lost_reason: Callable[[], str]) -> None:
        """Block until a signal or until the session is lost."""
        while not self.stopping.wait(0.5):
            if lost.is_set():
                raise SessionLost(lost_reason())

    def stop_reason(self) -> Interrupted:
        return Interrupted.for_signal(self.signum or signal.SIGINT)


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f}s"
