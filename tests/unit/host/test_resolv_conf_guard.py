from pathlib import Path

from ktpy.host import resolvconf
from ktpy.host.journal import Journal, Owner
from ktpy.host.resolver import ResolvConfGuard, ResolvedGuard, configure_resolv_conf
from ktpy.host.runner import Completed
from tests.unit.host.fakehost import FakeHost

ORIGINAL = b"nameserver 10.0.0.1\nsearch lan\n"
SESSION = "ab12cd34"
SERVER = "169.254.0.1"


def connected(tmp_path: Path) -> tuple[Path, Journal, list[str], ResolvConfGuard]:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    journal = Journal.create(tmp_path / "journal", SESSION, Owner(1, 2, "b"))
    configure_resolv_conf(journal, servers=[SERVER], path=path)
    said: list[str] = []
    return path, journal, said, ResolvConfGuard(journal, [SERVER], said.append, path=path)


def test_repaired_is_none_while_the_block_is_first_and_whole() -> None:
    ours = resolvconf.with_nameservers(ORIGINAL, SESSION, [SERVER])
    assert resolvconf.repaired(ours, SESSION, [SERVER]) is None
    # Rewritten by a DHCP client: its lines stay, the block goes back in front.
    assert resolvconf.repaired(b"nameserver 10.9.9.9\n", SESSION, [SERVER]) == (
        resolvconf.with_nameservers(b"nameserver 10.9.9.9\n", SESSION, [SERVER])
    )
    # Something put a nameserver before the block: the block moves to the front again.
    pushed = b"nameserver 10.9.9.9\n" + ours
    assert resolvconf.repaired(pushed, SESSION, [SERVER]) == resolvconf.with_nameservers(
        b"nameserver 10.9.9.9\n" + ORIGINAL, SESSION, [SERVER]
    )


def test_a_rewritten_file_is_repaired_and_the_undo_leaves_the_other_programs_version(
    tmp_path: Path,
) -> None:
    path, journal, said, guard = connected(tmp_path)
    assert guard.check() is True
    assert said == []
    path.write_bytes(b"nameserver 10.9.9.9\n")  # NetworkManager, say
    assert guard.check() is True
    assert path.read_bytes().startswith(resolvconf.begin_marker(SESSION))
    assert path.read_bytes().endswith(b"nameserver 10.9.9.9\n")
    assert said == [f"{path}: changed by another program; ktpy's DNS server is back"]
    report = journal.undo_all(FakeHost())
    assert report.complete
    assert path.read_bytes() == b"nameserver 10.9.9.9\n"  # what the other program wanted


def test_a_program_that_keeps_rewriting_wins_and_ktpy_says_so(tmp_path: Path) -> None:
    path, journal, said, guard = connected(tmp_path)
    for second in range(6):
        path.write_bytes(b"nameserver 10.9.9.9\n")
        assert guard.check(now=float(second)) is (second < 5)
    assert "keeps being changed by another program" in said[-1]
    journal.close()


def test_resolved_link_settings_reverted_by_someone_are_set_again() -> None:
    calls: list[list[str]] = []
    servers = {"ktpy-ab12cd34": ""}

    def runner(argv: list[str] | tuple[str, ...]) -> Completed:
        calls.append(list(argv))
        if list(argv[:2]) == ["resolvectl", "dns"] and len(argv) == 3:
            return Completed(tuple(argv), 0, f"Link 5 (ktpy-ab12cd34): {servers[argv[2]]}\n", "")
        if list(argv[:2]) == ["resolvectl", "dns"]:
            servers[argv[2]] = " ".join(argv[3:])
        return Completed(tuple(argv), 0, "", "")

    said: list[str] = []
    guard = ResolvedGuard(
        "ktpy-ab12cd34", [SERVER], ["cluster.local"], [], said.append, runner=runner
    )
    assert guard.check() is True  # reverted: no server on the link
    assert servers["ktpy-ab12cd34"] == SERVER
    assert ["resolvectl", "domain", "ktpy-ab12cd34", "~cluster.local"] in calls
    assert said == [
        "systemd-resolved's settings of ktpy-ab12cd34: changed by another program; "
        "ktpy's DNS server is back"
    ]
    calls.clear()
    assert guard.check() is True
    assert calls == [["resolvectl", "dns", "ktpy-ab12cd34"]]  # intact: only looked
