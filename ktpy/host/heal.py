"""Heal before harm: what a killed ``ktpy connect`` left on this host comes first.

A journal whose owner is dead (``recovery.select_dead``: by the process table when
the owner is provably this host's, else by its lock) holds host changes nobody
will undo: a resolv.conf block that sends every lookup to a server that is
gone, routes into a device that is gone. ``ktpy connect`` replays them before it
changes anything (``heal``), and every other command says so first
(``notice``), in one line each.
"""

from __future__ import annotations

from pathlib import Path

from ktpy.host import recovery
from ktpy.host.journal import parse
from ktpy.host.runner import Runner, run


def _pending(info: recovery.JournalInfo) -> int:
    try:
        return len(parse(info.path.read_bytes()).pending())
    except (OSError, ValueError):
        return 0


def dead_journals(directory: Path) -> list[recovery.JournalInfo]:
    """Journals of this host's dead sessions (none if the directory is unreadable)."""
    try:
        infos = recovery.list_journals(directory)
    except OSError:
        return []
    return list(recovery.select_dead(infos, recovery.owner_state).dead)


def notice(directory: Path) -> str | None:
    """One line naming the dead sessions' leftovers and how to undo them, or None."""
    dead = dead_journals(directory)
    if not dead:
        return None
    sessions = ", ".join(info.session for info in dead)
    changes = sum(_pending(info) for info in dead)
    return (
        f"A killed ktpy connect left {changes} host change(s) behind (session {sessions}); "
        "'sudo ktpy clean --local' puts them back."
    )


def heal(directory: Path, runner: Runner = run) -> tuple[str | None, bool]:
    """Replay the dead sessions' journals. Returns one line for the user (None if there
    was nothing to do) and whether everything was put back."""
    if not dead_journals(directory):
        return None, True
    report = recovery.clean_local(directory, runner=runner)
    undone = sum(len(r.undone) for r in report.replayed)
    sessions = ", ".join(r.session for r in report.replayed) or "-"
    if report.complete:
        return (
            f"Put back what a killed ktpy connect left: {undone} host change(s) of session "
            f"{sessions} undone.",
            True,
        )
    failed = [f for r in report.replayed for f in r.failures] + report.problems
    return (
        f"Could not put back all a killed ktpy connect left (session {sessions}): "
        f"{'; '.join(failed)}.",
        False,
    )
