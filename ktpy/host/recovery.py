"""Recovery after a crash: the host journals on disk, which belong to dead sessions, their replay.

``clean_local`` (``ktpy clean --local``) replays the journals of sessions whose
process is gone; ``running_sessions`` tells ``ktpy connect`` that another one lives.

A journal is replayed only when both say its owner is dead:
- the owner: when it is provably this host's process (``procs.judge``: same
  boot, PID and time namespace, hostname), the process check decides; in every
  other case (another PID namespace sharing this directory, an earlier boot, a
  journal written before namespaces were recorded) the lock alone decides: held
  means alive, free means dead (a reboot drops routes and devices, but an
  edited /etc/resolv.conf on disk stays);
- the lock: the owner holds an exclusive flock on its journal while it lives,
  and ``Journal.take_over`` does not wait for it. Of two cleaners, one gets it.

The selection is a pure function of the journal headers, an injected process
check and an injected lock probe, tested without any real process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ktpy.errors import KtpyError
from ktpy.host import procs
from ktpy.host.journal import (
    Header,
    Journal,
    Owner,
    UndoReport,
    journal_files,
    lock_held,
    read_header,
)
from ktpy.host.procs import ProcessState
from ktpy.host.runner import Runner, run

ProcessCheck = Callable[[Owner], ProcessState]
LockProbe = Callable[[Path], bool]
TEMPORARY_GRACE = 60.0  # seconds a half-made journal may be someone's creation in progress


def owner_state(owner: Owner) -> ProcessState:
    return procs.state(owner.identity())


@dataclass(frozen=True)
class JournalInfo:
    path: Path
    header: Header | None
    problem: str | None = None

    @property
    def session(self) -> str:
        return self.header.session if self.header else self.path.name


def list_journals(directory: Path) -> list[JournalInfo]:
    infos: list[JournalInfo] = []
    for path in journal_files(directory):
        try:
            infos.append(JournalInfo(path, read_header(path)))
        except FileNotFoundError:
            continue  # removed by its owner meanwhile
        except (OSError, KtpyError) as exc:
            problem = exc.format_message() if isinstance(exc, KtpyError) else str(exc)
            infos.append(JournalInfo(path, None, problem))
    return infos


@dataclass(frozen=True)
class Selection:
    dead: tuple[JournalInfo, ...]
    live: tuple[JournalInfo, ...]
    unreadable: tuple[JournalInfo, ...]


def select_dead(
    infos: Iterable[JournalInfo], check: ProcessCheck, held: LockProbe = lock_held
) -> Selection:
    dead: list[JournalInfo] = []
    live: list[JournalInfo] = []
    unreadable: list[JournalInfo] = []
    for info in infos:
        if info.header is None:
            unreadable.append(info)
            continue
        state = check(info.header.owner)
        if state is ProcessState.ELSEWHERE:
            # Not provably our process: the kernel's lock says whether it lives.
            state = ProcessState.ALIVE if held(info.path) else ProcessState.GONE
        (live if state is ProcessState.ALIVE else dead).append(info)
    return Selection(tuple(dead), tuple(live), tuple(unreadable))


def running_sessions(
    directory: Path, check: ProcessCheck = owner_state, held: LockProbe = lock_held
) -> list[JournalInfo]:
    """Journals whose owner still runs: another ``ktpy connect`` on this machine."""
    return list(select_dead(list_journals(directory), check, held).live)


@dataclass
class CleanReport:
    replayed: list[UndoReport] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # "session (owner)" left alone
    busy: list[str] = field(default_factory=list)  # held by another process right now
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems and all(r.complete for r in self.replayed)

    def lines(self) -> list[str]:
        """What happened, for the user, one line each."""
        out: list[str] = []
        for report in self.replayed:
            out += [f"session {report.session}: undid {what}" for what in report.undone]
            out += [f"session {report.session}: {note}" for note in report.notes]
            out += [f"session {report.session}: FAILED {what}" for what in report.failures]
            if report.removed:
                out.append(f"session {report.session}: host changes all undone")
        out += [f"session {what}: still running, left alone" for what in self.live]
        out += [
            f"session {what}: being handled by another process, left alone" for what in self.busy
        ]
        out += self.problems
        return out


def _remove_stale_temporaries(directory: Path, now: float) -> None:
    """A journal under construction whose maker died before naming it holds no change
    (the name comes before the first record), so it can go."""
    try:
        candidates = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    except FileNotFoundError:
        return
    for path in candidates:
        # Locked means its maker is alive and still at it (flock raises, suppressed).
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime <= TEMPORARY_GRACE:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
            finally:
                os.close(fd)


def clean_local(
    directory: Path,
    *,
    runner: Runner = run,
    check: ProcessCheck = owner_state,
    held: LockProbe = lock_held,
    clock: Callable[[], float] = time.time,
) -> CleanReport:
    """Undo the host changes of every dead session journalled in ``directory``."""
    report = CleanReport()
    _remove_stale_temporaries(directory, clock())
    selection = select_dead(list_journals(directory), check, held)
    report.live += [
        f"{i.session} ({i.header.owner.describe()})" for i in selection.live if i.header
    ]
    report.problems += [
        f"cannot read journal {info.path}: {info.problem}; left as it is"
        for info in selection.unreadable
    ]
    for info in selection.dead:
        try:
            journal = Journal.take_over(info.path)
        except (OSError, KtpyError) as exc:
            message = exc.format_message() if isinstance(exc, KtpyError) else str(exc)
            report.problems.append(f"cannot replay {info.path}: {message}; left as it is")
            continue
        if journal is None:
            report.busy.append(info.session)
            continue
        try:
            report.replayed.append(journal.undo_all(runner))
        finally:
            journal.close()
    return report
