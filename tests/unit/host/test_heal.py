import os
from pathlib import Path

from ktpy.host import heal
from ktpy.host.journal import Change, Journal, Owner
from ktpy.host.undo import LinkDelete, RouteDelete
from tests.unit.host.fakehost import FakeHost

# Not provably this host's process (another boot), and its lock is free: dead.
KILLED = Owner(400, 4000, "boot-before", 1, 0, "laptop")


def killed_session(directory: Path, host: FakeHost) -> None:
    tun = "ktpy-dead0001"
    journal = Journal.create(directory, "dead0001", KILLED)
    journal.record(Change(f"TUN device {tun}", LinkDelete(tun)))
    journal.record(Change("route", RouteDelete("10.96.0.0/16", tun)))
    host.links.add(tun)
    host.routes.add(("main", "10.96.0.0/16", tun))
    journal.close()  # the kill -9


def test_nothing_to_say_without_journals(tmp_path: Path) -> None:
    assert heal.notice(tmp_path / "missing") is None
    assert heal.heal(tmp_path / "missing", runner=FakeHost()) == (None, True)


def test_a_dead_sessions_leftovers_are_named_then_put_back_in_one_line(tmp_path: Path) -> None:
    host = FakeHost()
    killed_session(tmp_path, host)
    assert heal.notice(tmp_path) == (
        "A killed ktpy connect left 2 host change(s) behind (session dead0001); "
        "'sudo ktpy clean --local' puts them back."
    )
    line, healed = heal.heal(tmp_path, runner=host)
    assert healed
    assert line == (
        "Put back what a killed ktpy connect left: 2 host change(s) of session dead0001 undone."
    )
    assert host.links == {"lo", "eth0"}
    assert list(tmp_path.iterdir()) == []
    assert heal.notice(tmp_path) is None


def test_a_live_session_is_neither_named_nor_touched(tmp_path: Path) -> None:
    host = FakeHost()
    with Journal.create(tmp_path, "live0001", Owner(os.getpid(), 1, "boot-before", 1, 0, "x")):
        assert heal.notice(tmp_path) is None  # its lock is held: alive
        assert heal.heal(tmp_path, runner=host) == (None, True)
    assert host.calls == []
