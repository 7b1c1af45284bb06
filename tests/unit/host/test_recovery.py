import os
import time
from pathlib import Path

from ktpy.host.journal import Change, Header, Journal, Owner
from ktpy.host.procs import ProcessState
from ktpy.host.recovery import (
    JournalInfo,
    clean_local,
    list_journals,
    running_sessions,
    select_dead,
)
from ktpy.host.undo import LinkDelete, RouteDelete
from tests.unit.host.fakehost import FakeHost

LIVE = Owner(100, 1000, "boot-now")
DEAD = Owner(200, 2000, "boot-now")
REUSED = Owner(300, 3000, "boot-now")  # the pid runs, with another start time
OLD_BOOT = Owner(400, 4000, "boot-before")

STATES = {
    LIVE: ProcessState.ALIVE,
    DEAD: ProcessState.GONE,
    REUSED: ProcessState.GONE,
    OLD_BOOT: ProcessState.ELSEWHERE,
}


def check(owner: Owner) -> ProcessState:
    return STATES[owner]


def info(session: str, owner: Owner | None) -> JournalInfo:
    header = Header(session, owner, "2026-11-27T09:00:00+00:00") if owner else None
    return JournalInfo(Path(f"/j/{session}.journal"), header, None if owner else "damaged")


def test_select_dead() -> None:
    infos = [
        info("live0001", LIVE),
        info("dead0001", DEAD),
        info("reused01", REUSED),
        info("oldboot1", OLD_BOOT),
        info("broken01", None),
    ]
    selection = select_dead(infos, check)
    assert [i.session for i in selection.dead] == ["dead0001", "reused01", "oldboot1"]
    assert [i.session for i in selection.live] == ["live0001"]
    assert [i.path.name for i in selection.unreadable] == ["broken01.journal"]


def test_an_owner_not_provably_ours_is_judged_by_its_lock() -> None:
    """Another PID namespace, an earlier boot or an old header: the process table cannot
    tell, the kernel's lock can (an flock is seen across PID namespaces)."""
    infos = [info("otherns1", OLD_BOOT), info("otherns2", OLD_BOOT), info("dead0001", DEAD)]
    locked = {Path("/j/otherns1.journal")}
    selection = select_dead(infos, check, held=lambda path: path in locked)
    assert [i.session for i in selection.live] == ["otherns1"]
    assert [i.session for i in selection.dead] == ["otherns2", "dead0001"]


def test_a_live_owner_in_another_pid_namespace_is_running(tmp_path: Path) -> None:
    """Its header names a PID namespace that is not ours, so only its lock says it runs."""
    elsewhere = Owner(os.getpid(), 1, "boot-before", 1, 0, "another-host")
    with Journal.create(tmp_path, "otherns1", elsewhere):
        assert [i.session for i in running_sessions(tmp_path)] == ["otherns1"]
        assert clean_local(tmp_path).live == [f"otherns1 ({elsewhere.describe()})"]
    assert running_sessions(tmp_path) == []


def journal_with_route(directory: Path, session: str, owner: Owner, host: FakeHost) -> Journal:
    journal = Journal.create(directory, session, owner)
    tun = f"ktpy-{session}"
    journal.record(Change(f"TUN device {tun}", LinkDelete(tun)))
    journal.record(Change("route", RouteDelete("10.96.0.0/16", tun)))
    host.links.add(tun)
    host.routes.add(("main", "10.96.0.0/16", tun))
    return journal


def test_clean_local_replays_dead_sessions_and_leaves_live_ones(tmp_path: Path) -> None:
    host = FakeHost()
    live = journal_with_route(tmp_path, "live0001", LIVE, host)
    live_bytes = live.path.read_bytes()
    journal_with_route(tmp_path, "dead0001", DEAD, host).close()  # the kill -9
    journal_with_route(tmp_path, "oldboot1", OLD_BOOT, host).close()
    report = clean_local(tmp_path, runner=host, check=check)
    assert report.complete
    assert sorted(r.session for r in report.replayed) == ["dead0001", "oldboot1"]
    assert [p.name for p in tmp_path.iterdir()] == ["live0001.journal"]
    assert live.path.read_bytes() == live_bytes
    assert host.links == {"lo", "eth0", "ktpy-live0001"}
    assert host.routes == {("main", "10.96.0.0/16", "ktpy-live0001")}
    assert report.live == [f"live0001 ({LIVE.describe()})"]
    assert "session dead0001: host changes all undone" in report.lines()
    assert not any(("live0001" in call[-1]) for call in host.calls if call)
    live.close()


def test_a_dead_owner_whose_journal_is_locked_is_left_to_the_holder(tmp_path: Path) -> None:
    """Another cleaner (or a stuck owner) holds the lock: not touched, and said so."""
    host = FakeHost()
    held = journal_with_route(tmp_path, "dead0001", DEAD, host)
    report = clean_local(tmp_path, runner=host, check=check)
    assert report.busy == ["dead0001"]
    assert report.replayed == []
    assert held.path.exists()
    assert host.calls == []
    held.close()


def test_a_live_owner_is_believed_even_without_the_lock(tmp_path: Path) -> None:
    host = FakeHost()
    journal_with_route(tmp_path, "live0001", LIVE, host).close()
    report = clean_local(tmp_path, runner=host, check=check)
    assert report.replayed == []
    assert (tmp_path / "live0001.journal").exists()


def test_unreadable_journals_are_kept_and_reported(tmp_path: Path) -> None:
    (tmp_path / "junk0001.journal").write_bytes(b"not json\n")
    report = clean_local(tmp_path, runner=FakeHost(), check=check)
    assert not report.complete
    assert (tmp_path / "junk0001.journal").exists()
    assert "cannot read journal" in report.problems[0]


def test_a_failed_undo_keeps_the_journal_for_the_next_clean(tmp_path: Path) -> None:
    host = FakeHost()
    journal_with_route(tmp_path, "dead0001", DEAD, host).close()
    host.failing[("ip", "link", "delete")] = (2, "RTNETLINK answers: Operation not permitted")
    report = clean_local(tmp_path, runner=host, check=check)
    assert not report.complete
    assert any("FAILED TUN device" in line for line in report.lines())
    assert (tmp_path / "dead0001.journal").exists()
    host.failing.clear()
    assert clean_local(tmp_path, runner=host, check=check).complete
    assert list(tmp_path.iterdir()) == []


def test_no_journal_directory_is_nothing_to_do(tmp_path: Path) -> None:
    report = clean_local(tmp_path / "none", runner=FakeHost(), check=check)
    assert report.complete
    assert report.lines() == []
    assert list_journals(tmp_path / "none") == []


def test_stale_temporaries_go_young_ones_stay(tmp_path: Path) -> None:
    old = tmp_path / ".dead0001.77.tmp"
    young = tmp_path / ".new00001.78.tmp"
    old.write_bytes(b"")
    young.write_bytes(b"")
    past = time.time() - 3600
    os.utime(old, (past, past))
    clean_local(tmp_path, runner=FakeHost(), check=check)
    assert not old.exists()
    assert young.exists()


def test_running_sessions_are_the_live_journals(tmp_path: Path) -> None:
    host = FakeHost()
    live = journal_with_route(tmp_path, "live0001", LIVE, host)
    journal_with_route(tmp_path, "dead0001", DEAD, host).close()
    assert [i.session for i in running_sessions(tmp_path, check)] == ["live0001"]
    live.close()
