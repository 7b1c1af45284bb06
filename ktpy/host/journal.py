"""The durable journal of one session's host changes, each with its undo.

One file per session, ``<journal dir>/<session>.journal``, JSON lines::

    {"journal": "ktpy-host", "version": 1, "session": "ab12cd34",
     "owner": {"pid": 4242, "start_ticks": 81234, "boot_id": "...", "pid_ns": 4026531836,
               "time_ns": 4026531834, "hostname": "laptop"}, "created": "..."}
    {"seq": 1, "change": "TUN device ktpy-ab12cd34", "undo": {"kind": "link-delete", ...}}
    {"seq": 2, "change": "route 10.96.0.0/16 dev ktpy-ab12cd34", "undo": {...}}
    {"undone": 2}

``record`` appends a change and its undo and fsyncs before it returns; only then
does the caller make the change. So after any crash the journal holds every
change that may have been made, plus perhaps one that was not (undos are
harmless then). ``undo_all`` runs the undos newest first, appends ``undone``
after each so an interrupted replay resumes where it stopped, and removes the
file only when every undo succeeded.

Locking: the owning process holds an exclusive ``flock`` on its journal for
its whole life; the kernel drops it when the process dies, even by kill -9.
``take_over`` (for ``clean --local``) gets the lock without waiting or not at
all, so two cleaners never replay one journal, and a live session's journal
is never replayed. The file appears under its final name only once its header
is written and its lock held (written under a temporary name, then linked), so
a cleaner never sees a journal without its owner.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from ktpy.errors import BadJournalEntry, JournalProblem, UndoFailed
from ktpy.host import procs
from ktpy.host.runner import Runner, run
from ktpy.host.undo import Undo, undo_from_json, undo_to_json

FORMAT = "ktpy-host"
VERSION = 1
SUFFIX = ".journal"
_SESSION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Owner:
    """The process that made the changes, as ``procs.Identity`` records it: pid + start
    time + boot id name it, its PID and time namespaces and hostname say who may
    judge it by the process table (None in journals written before they were kept)."""

    pid: int
    start_ticks: int
    boot_id: str
    pid_ns: int | None = None
    time_ns: int | None = None
    hostname: str | None = None

    @classmethod
    def this_process(cls) -> Owner:
        return cls(*procs.identity())

    def identity(self) -> procs.Identity:
        return procs.Identity(
            self.pid, self.start_ticks, self.boot_id, self.pid_ns, self.time_ns, self.hostname
        )

    def describe(self) -> str:
        where = f" on {self.hostname}" if self.hostname else ""
        return f"pid {self.pid}{where}, start tick {self.start_ticks}, boot {self.boot_id[:8]}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
        }
        if self.pid_ns is not None:
            data |= {"pid_ns": self.pid_ns, "time_ns": self.time_ns, "hostname": self.hostname}
        return data

    @classmethod
    def from_json(cls, data: Any) -> Owner:
        if not isinstance(data, dict):
            raise BadJournalEntry("the journal header has no owner")
        try:
            if data.get("pid_ns") is None:  # written before namespaces were recorded
                return cls(int(data["pid"]), int(data["start_ticks"]), str(data["boot_id"]))
            return cls(
                int(data["pid"]),
                int(data["start_ticks"]),
                str(data["boot_id"]),
                int(data["pid_ns"]),
                int(data.get("time_ns") or 0),
                str(data.get("hostname") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadJournalEntry(f"bad owner in the journal header: {exc}") from exc


@dataclass(frozen=True)
class Change:
    """A host change as a person reads it, and the undo that takes it back."""

    description: str
    undo: Undo


@dataclass(frozen=True)
class Entry:
    seq: int
    change: Change
    undone: bool


@dataclass(frozen=True)
class Header:
    session: str
    owner: Owner
    created: str


@dataclass(frozen=True)
class Contents:
    header: Header
    entries: tuple[Entry, ...]
    valid_length: int  # bytes up to the last complete line; a torn append is cut off
    torn: bool

    def pending(self) -> list[Entry]:
        """Changes not yet undone, newest first: the order to undo them in."""
        return [entry for entry in reversed(self.entries) if not entry.undone]


def _header_json(header: Header) -> dict[str, Any]:
    return {
        "journal": FORMAT,
        "version": VERSION,
        "session": header.session,
        "owner": header.owner.to_json(),
        "created": header.created,
    }


def _parse_header(line: bytes) -> Header:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise BadJournalEntry(f"the journal header is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("journal") != FORMAT:
        raise BadJournalEntry("not a ktpy host journal")
    if data.get("version") != VERSION:
        raise BadJournalEntry(f"journal version {data.get('version')!r} is not {VERSION}")
    return Header(str(data["session"]), Owner.from_json(data.get("owner")), str(data["created"]))


def parse(data: bytes) -> Contents:
    """Read a journal. Only the last line may be incomplete (an append cut short by a
    crash: its change was never made, as ``record`` had not returned); any other bad
    line is damage, and the journal is refused rather than half-replayed."""
    lines = data.split(b"\n")
    # Everything after the last newline is a torn append (or nothing).
    complete, tail = lines[:-1], lines[-1]
    valid_length = len(data) - len(tail)
    if not complete:
        raise BadJournalEntry("the journal has no complete header line")
    header = _parse_header(complete[0])
    changes: dict[int, Change] = {}
    undone: set[int] = set()
    for number, line in enumerate(complete[1:], start=2):
        try:
            item = json.loads(line)
            if "undone" in item:
                undone.add(int(item["undone"]))
                continue
            seq = int(item["seq"])
            changes[seq] = Change(str(item["change"]), undo_from_json(item["undo"]))
        except BadJournalEntry as exc:
            raise BadJournalEntry(f"line {number}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise BadJournalEntry(f"line {number} is damaged: {exc}") from exc
    entries = tuple(Entry(seq, change, seq in undone) for seq, change in sorted(changes.items()))
    return Contents(header, entries, valid_length, torn=bool(tail))


def journal_path(directory: Path, session: str) -> Path:
    return directory / f"{session}{SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":"), sort_keys=False).encode() + b"\n"


@dataclass
class UndoReport:
    session: str
    undone: list[str] = field(default_factory=list)  # descriptions of changes taken back
    notes: list[str] = field(default_factory=list)  # things the user should know
    failures: list[str] = field(default_factory=list)
    removed: bool = False  # the journal file is gone: nothing is left to undo

    @property
    def complete(self) -> bool:
        return not self.failures


class Journal:
    """An open journal whose lock this process holds. Use ``create`` or ``take_over``."""

    def __init__(self, path: Path, fd: int, header: Header, next_seq: int) -> None:
        self.path = path
        self.header = header
        self._fd: int | None = fd
        self._next_seq = next_seq

    @property
    def session(self) -> str:
        return self.header.session

    @property
    def owner(self) -> Owner:
        return self.header.owner

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_fd(self) -> int:
        if self._fd is None:
            raise JournalProblem(f"journal {self.path} is closed")
        return self._fd

    @classmethod
    def create(cls, directory: Path, session: str, owner: Owner | None = None) -> Journal:
        """A new journal for ``session``, owned (and locked) by this process."""
        if not _SESSION.match(session):
            raise ValueError(f"{session!r} is not a session id")
        owner = owner or Owner.this_process()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = journal_path(directory, session)
        header = Header(session, owner, datetime.now(UTC).isoformat(timespec="seconds"))
        temporary = directory / f".{session}.{os.getpid()}.tmp"
        fd = os.open(
            temporary, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            # A new file: only a cleaner could hold it, and cleaners leave young ones alone.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, _line(_header_json(header)))
            os.fsync(fd)
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise JournalProblem(
                    f"a journal for session {session} already exists: {path}"
                ) from None
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        temporary.unlink()
        _fsync_dir(directory)
        return cls(path, fd, header, next_seq=1)

    @classmethod
    def take_over(cls, path: Path) -> Journal | None:
        """Open a journal to replay it, or None if another process holds it (its live
        owner, or another cleaner) or it was removed meanwhile. Cuts off a torn append."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if not _try_lock(fd):
                os.close(fd)
                return None
            try:
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # fully undone and removed by whoever held the lock before us
                os.close(fd)
                return None
            contents = parse(_read_fd(fd))
            if contents.torn:
                os.ftruncate(fd, contents.valid_length)
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        last = max((entry.seq for entry in contents.entries), default=0)
        return cls(path, fd, contents.header, next_seq=last + 1)

    def record(self, change: Change) -> int:
        """Write ``change`` and its undo to disk; make the change only after this returns."""
        fd = self._require_fd()
        seq = self._next_seq
        _write_all(
            fd,
            _line({"seq": seq, "change": change.description, "undo": undo_to_json(change.undo)}),
        )
        os.fsync(fd)
        self._next_seq += 1
        return seq

    def contents(self) -> Contents:
        return parse(_read_fd(self._require_fd()))

    def undo_all(self, runner: Runner = run) -> UndoReport:
        """Undo every change not yet undone, newest first. Each undo is tried even if an
        earlier one failed (a failed resolv.conf restore must not keep a route); the
        journal is removed, and its lock dropped, only if all of them succeeded."""
        fd = self._require_fd()
        contents = parse(_read_fd(fd))
        if contents.torn:
            # Our own append cut short (a signal mid-record): its change was never made.
            os.ftruncate(fd, contents.valid_length)
        report = UndoReport(self.session)
        for entry in contents.pending():
            try:
                note = entry.change.undo.carry_out(runner)
            except UndoFailed as exc:
                report.failures.append(f"{entry.change.description}: {exc.format_message()}")
                continue
            except Exception as exc:  # noqa: BLE001 (one broken undo must not stop the rest)
                report.failures.append(f"{entry.change.description}: {exc!r}")
                continue
            _write_all(fd, _line({"undone": entry.seq}))
            os.fsync(fd)
            report.undone.append(entry.change.description)
            if note:
                report.notes.append(note)
        if report.complete:
            self.path.unlink()
            _fsync_dir(self.path.parent)
            self.close()
            report.removed = True
        return report

    def close(self) -> None:
        """Drop the lock and keep the file: what is left is for ``clean --local``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def lock_held(path: Path) -> bool:
    """Whether a process holds the journal's lock (its owner, alive, or a cleaner):
    a shared lock tried without waiting and dropped at once. The kernel keeps flocks
    across PID namespaces, so this sees an owner whose pids are not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops the shared lock if it was taken
    return False


def read_header(path: Path) -> Header:
    """The header of a journal, read without taking its lock (to list journals)."""
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.endswith(b"\n"):
        raise BadJournalEntry("the journal has no complete header line")
    return _parse_header(first)


def journal_files(directory: Path) -> list[Path]:
    """Journals in ``directory``, by name; none if it does not exist."""
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
