import json
import os
from pathlib import Path

import pytest

from ktpy.errors import JournalProblem
from ktpy.host.journal import Change, Journal, Owner, parse, read_header
from ktpy.host.undo import (
    BadJournalEntry,
    LinkDelete,
    ResolvConfRestore,
    ResolvedRevert,
    RouteDelete,
    Undo,
    undo_from_json,
    undo_to_json,
)
from tests.unit.host.fakehost import FakeHost

OWNER = Owner(4242, 81234, "boot-1")
TUN = "ktpy-ab12cd34"


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def make_session(tmp_path: Path, host: FakeHost) -> Journal:
    """A journal with the changes connect makes, each made only after it was recorded."""
    journal = Journal.create(tmp_path, "ab12cd34", OWNER)
    journal.record(Change(f"TUN device {TUN}", LinkDelete(TUN)))
    host.links.add(TUN)
    for dst in ("10.96.0.0/16", "10.244.0.0/16"):
        journal.record(Change(f"route {dst}", RouteDelete(dst, TUN)))
        host.routes.add(("main", dst, TUN))
    journal.record(Change("resolved", ResolvedRevert(TUN)))
    host.resolved_links[TUN] = ["dns 169.254.0.1"]
    return journal


def test_header_names_the_session_and_its_owner(tmp_path: Path) -> None:
    with Journal.create(tmp_path, "ab12cd34", OWNER) as journal:
        assert journal.path == tmp_path / "ab12cd34.journal"
        header = read_header(journal.path)
    assert header.session == "ab12cd34"
    assert header.owner == OWNER
    assert (tmp_path / "ab12cd34.journal").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ab12cd34.journal"]  # no temporary left


def test_the_owner_is_this_process_by_default(tmp_path: Path) -> None:
    with Journal.create(tmp_path, "ab12cd34") as journal:
        assert journal.owner.pid == os.getpid()


def test_the_owner_records_its_namespaces_and_old_headers_are_still_read(
    tmp_path: Path,
) -> None:
    with Journal.create(tmp_path, "ab12cd34") as journal:
        owner = read_header(journal.path).owner
    assert owner.pid_ns == Path("/proc/self/ns/pid").stat().st_ino
    assert owner.hostname == os.uname().nodename
    old = tmp_path / "old00001.journal"
    old.write_text(
        json.dumps(
            {
                "journal": "ktpy-host",
                "version": 1,
                "session": "old00001",
                "owner": {"pid": 1, "start_ticks": 2, "boot_id": "b"},
                "created": "2026-11-27T09:00:00+00:00",
            }
        )
        + "\n"
    )
    assert read_header(old).owner == Owner(1, 2, "b")  # no namespaces: judged by its lock


def test_record_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "ab12cd34", OWNER)
    journal.record(Change("route 10.96.0.0/16", RouteDelete("10.96.0.0/16", TUN)))
    # Read through another descriptor, as a cleaner would after a kill -9.
    written = lines(journal.path)
    assert written[1] == {
        "seq": 1,
        "change": "route 10.96.0.0/16",
        "undo": {
            "kind": "route-delete",
            "destination": "10.96.0.0/16",
            "device": TUN,
            "table": "main",
        },
    }
    journal.close()


def test_undo_all_runs_undos_newest_first_and_removes_the_journal(tmp_path: Path) -> None:
    host = FakeHost()
    journal = make_session(tmp_path, host)
    report = journal.undo_all(host)
    assert report.undone == [
        "resolved",
        "route 10.244.0.0/16",
        "route 10.96.0.0/16",
        f"TUN device {TUN}",
    ]
    assert [call[:3] for call in host.calls] == [
        ("resolvectl", "revert", TUN),
        ("ip", "route", "del"),
        ("ip", "route", "del"),
        ("ip", "link", "delete"),
    ]
    assert report.complete
    assert report.removed
    assert not journal.path.exists()
    assert journal.closed
    assert host.links == {"lo", "eth0"}
    assert host.routes == set()
    assert host.resolved_links == {}


def test_every_undo_is_harmless_when_its_change_is_already_gone(tmp_path: Path) -> None:
    """After a kill -9 the TUN device vanished with its routes and resolved settings:
    each undo finds nothing to do and counts as done."""
    host = FakeHost()
    journal = make_session(tmp_path, host)
    host.links.discard(TUN)
    host.routes.clear()
    host.resolved_links.clear()
    report = journal.undo_all(host)
    assert report.complete
    assert report.removed
    assert len(report.undone) == 4


def test_each_undo_can_run_twice(tmp_path: Path) -> None:
    host = FakeHost()
    host.links.add(TUN)
    host.routes.add(("main", "10.96.0.0/16", TUN))
    undos: list[Undo] = [ResolvedRevert(TUN), RouteDelete("10.96.0.0/16", TUN), LinkDelete(TUN)]
    for undo in undos + undos:
        assert undo.carry_out(host) is None
    assert host.links == {"lo", "eth0"}


def test_a_route_of_another_device_with_the_same_destination_is_never_deleted() -> None:
    host = FakeHost()
    host.links |= {TUN, "vpn0"}
    host.routes.add(("main", "10.96.0.0/16", "vpn0"))
    assert RouteDelete("10.96.0.0/16", TUN).carry_out(host) is None
    assert host.routes == {("main", "10.96.0.0/16", "vpn0")}


def test_crash_between_record_and_change(tmp_path: Path) -> None:
    """The last change was recorded but never made: undoing it is harmless, and the
    changes that were made are undone."""
    host = FakeHost()
    journal = make_session(tmp_path, host)
    journal.record(Change("route 10.1.0.0/16", RouteDelete("10.1.0.0/16", TUN)))
    journal.close()  # the process dies here; its lock goes with it
    taken = Journal.take_over(journal.path)
    assert taken is not None
    report = taken.undo_all(host)
    assert report.complete
    assert report.removed
    assert report.undone[0] == "route 10.1.0.0/16"
    assert host.links == {"lo", "eth0"}
    assert host.routes == set()


def test_a_torn_last_line_is_an_append_that_never_finished(tmp_path: Path) -> None:
    host = FakeHost()
    journal = make_session(tmp_path, host)
    journal.close()
    with journal.path.open("ab") as handle:
        handle.write(b'{"seq": 5, "change": "route 10.')
    taken = Journal.take_over(journal.path)
    assert taken is not None
    assert not journal.path.read_bytes().endswith(b"10.")  # cut off before appending
    report = taken.undo_all(host)
    assert report.removed
    assert len(report.undone) == 4


def test_a_damaged_line_in_the_middle_is_refused(tmp_path: Path) -> None:
    journal = make_session(tmp_path, FakeHost())
    journal.close()
    data = journal.path.read_bytes().split(b"\n")
    data[2] = b"garbage"
    journal.path.write_bytes(b"\n".join(data))
    with pytest.raises(BadJournalEntry, match="line 3"):
        Journal.take_over(journal.path)
    assert journal.path.exists()


def test_a_failed_undo_keeps_the_journal_and_the_others_still_run(tmp_path: Path) -> None:
    host = FakeHost()
    journal = make_session(tmp_path, host)
    host.failing[("ip", "route", "del", "10.244.0.0/16")] = (2, "RTNETLINK answers: Busy")
    report = journal.undo_all(host)
    assert not report.complete
    assert not report.removed
    assert report.failures == [
        "route 10.244.0.0/16: cannot delete route 10.244.0.0/16 dev ktpy-ab12cd34:"
        f" ip route del 10.244.0.0/16 dev {TUN} table main: exit 2: RTNETLINK answers: Busy"
    ]
    assert "route 10.96.0.0/16" in report.undone
    assert f"TUN device {TUN}" in report.undone
    journal.close()
    # The retry resumes: only the failed one is left, and the device is gone by now.
    contents = parse(journal.path.read_bytes())
    assert [entry.change.description for entry in contents.pending()] == ["route 10.244.0.0/16"]
    host.failing.clear()
    taken = Journal.take_over(journal.path)
    assert taken is not None
    again = taken.undo_all(host)
    assert again.undone == ["route 10.244.0.0/16"]
    assert again.removed


def test_a_live_owners_journal_cannot_be_taken_over(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "ab12cd34", OWNER)
    assert Journal.take_over(journal.path) is None  # the owner holds the lock
    journal.close()
    taken = Journal.take_over(journal.path)
    assert taken is not None
    assert Journal.take_over(journal.path) is None  # and now the first cleaner holds it
    taken.close()


def test_take_over_of_a_removed_journal(tmp_path: Path) -> None:
    assert Journal.take_over(tmp_path / "gone.journal") is None


def test_one_journal_per_session(tmp_path: Path) -> None:
    with Journal.create(tmp_path, "ab12cd34", OWNER), pytest.raises(JournalProblem):
        Journal.create(tmp_path, "ab12cd34", OWNER)


def test_session_ids_are_safe_file_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session id"):
        Journal.create(tmp_path, "../etc", OWNER)


def test_record_after_close_is_refused(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "ab12cd34", OWNER)
    journal.close()
    with pytest.raises(JournalProblem):
        journal.record(Change("x", LinkDelete(TUN)))


def test_undo_kinds_round_trip_through_json() -> None:
    undos: list[Undo] = [
        LinkDelete(TUN),
        RouteDelete("fd00::/108", TUN, "main"),
        ResolvedRevert(TUN),
        ResolvConfRestore("/etc/resolv.conf", "ab12cd34", b"\xffnameserver 1.1.1.1", b"x"),
    ]
    for undo in undos:
        assert undo_from_json(json.loads(json.dumps(undo_to_json(undo)))) == undo


def test_an_unknown_undo_kind_is_refused() -> None:
    with pytest.raises(BadJournalEntry, match="unknown undo kind"):
        undo_from_json({"kind": "format-disk"})
