from collections.abc import Sequence
from pathlib import Path

import pytest

from ktpy.errors import HostChangeFailed, KtpyError
from ktpy.host.journal import Journal, Owner
from ktpy.host.resolver import (
    ResolverChoice,
    ResolverKind,
    check_domain,
    choose_resolver,
    configure_resolv_conf,
    configure_resolved,
    configure_resolver,
    laptop_search_domains,
    resolved_running,
    set_domains,
    upstream_nameservers,
)
from ktpy.host.runner import Completed
from tests.unit.host.fakehost import FakeHost

TUN = "ktpy-ab12cd34"
STUB = b"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
PLAIN = b"nameserver 10.250.0.1\n"


def journal_in(tmp_path: Path) -> Journal:
    return Journal.create(tmp_path / "journal", "ab12cd34", Owner(1, 2, "b"))


def test_without_resolved_it_is_resolv_conf() -> None:
    choice = choose_resolver(False, STUB, b"hosts: files resolve dns\n")
    assert choice.kind is ResolverKind.RESOLV_CONF
    assert choice.reason == "systemd-resolved is not running"


def test_resolved_with_its_stub_in_resolv_conf() -> None:
    assert choose_resolver(True, STUB, b"hosts: files dns\n").kind is ResolverKind.RESOLVED


def test_resolved_through_nss_resolve() -> None:
    nsswitch = b"# comment\nhosts:   files mymachines resolve [!UNAVAIL=return] dns\n"
    choice = choose_resolver(True, PLAIN, nsswitch)
    assert choice == ResolverChoice(ResolverKind.RESOLVED, "nsswitch.conf asks systemd-resolved")


def test_resolved_running_but_bypassed() -> None:
    choice = choose_resolver(True, PLAIN, b"hosts: files dns # resolve\n")
    assert choice.kind is ResolverKind.RESOLV_CONF
    assert "do not ask it" in choice.reason
    assert choose_resolver(True, None, None).kind is ResolverKind.RESOLV_CONF


def _answer(stdout: str, code: int = 0) -> "FakeRunner":
    return FakeRunner({"busctl": Completed(("busctl",), code, stdout, "")})


class FakeRunner:
    def __init__(self, answers: dict[str, Completed]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> Completed:
        self.calls.append(tuple(argv))
        return self.answers[argv[0]]


def test_resolved_running_asks_the_bus_who_owns_the_name() -> None:
    assert resolved_running(_answer("b true\n"))
    assert not resolved_running(_answer("b false\n"))
    runner = _answer("", 127)  # no busctl
    runner.answers["resolvectl"] = Completed(("resolvectl",), 0, "Global\n", "")
    assert resolved_running(runner)
    assert runner.calls[-1] == ("resolvectl", "status")


def test_domains() -> None:
    assert check_domain("~Cluster.Local.") == "cluster.local"
    assert check_domain("ns-1") == "ns-1"
    for catch_all in ("~.", ".", "", "~"):
        with pytest.raises(ValueError, match="catch every name"):
            check_domain(catch_all)
    with pytest.raises(ValueError, match="not a domain"):
        check_domain("bad domain")


def test_configure_resolved_records_first_then_sets_only_routing_domains(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    journal = journal_in(tmp_path)

    def recorded_before(argv: tuple[str, ...]) -> None:
        assert b"resolved-revert" in journal.path.read_bytes()

    host.before = recorded_before
    configure_resolved(
        journal,
        link=TUN,
        servers=["169.254.0.1"],
        routing_domains=["cluster.local", "ns1"],
        search_domains=["default.svc.cluster.local"],
        runner=host,
    )
    assert host.resolved_links[TUN] == [
        "dns 169.254.0.1",
        "domain ~cluster.local ~ns1 default.svc.cluster.local",
        "default-route false",
        "llmnr no",
        "mdns no",
        "dnsovertls no",
        "dnssec no",
    ]
    assert journal.undo_all(host).removed
    assert host.resolved_links == {}


def test_domains_change_during_the_session_and_the_first_revert_covers_them(
    tmp_path: Path,
) -> None:
    host = FakeHost(links={"lo", TUN})
    journal = journal_in(tmp_path)
    with pytest.raises(KtpyError, match="no pending systemd-resolved revert"):
        set_domains(journal, link=TUN, routing_domains=["cluster.local", "dev"], runner=host)
    assert host.calls == []
    configure_resolved(
        journal,
        link=TUN,
        servers=["169.254.0.1"],
        routing_domains=["cluster.local", "ns1"],
        search_domains=["ns1.svc.cluster.local"],
        runner=host,
    )
    entries = len(journal.contents().entries)
    set_domains(
        journal,
        link=TUN,
        routing_domains=["cluster.local", "ns1", "test"],
        search_domains=["ns1.svc.cluster.local"],
        runner=host,
    )
    assert host.resolved_links[TUN][-1] == "domain ~cluster.local ~ns1 ~test ns1.svc.cluster.local"
    assert len(journal.contents().entries) == entries, "no new entry: the revert covers it"
    assert journal.undo_all(host).removed
    assert host.resolved_links == {}
    with pytest.raises(KtpyError):  # undone and closed: nothing would undo it again
        set_domains(journal, link=TUN, routing_domains=["cluster.local"], runner=host)


def test_laptop_search_domains(tmp_path: Path) -> None:
    conf, uplink = tmp_path / "resolv.conf", tmp_path / "uplink.conf"
    conf.write_bytes(b"search old.example\nnameserver 10.0.0.1\nsearch corp.example lab.test\n")
    uplink.write_bytes(b"nameserver 10.250.0.1\nsearch .\n")
    plain = ResolverChoice(ResolverKind.RESOLV_CONF, "")
    resolved = ResolverChoice(ResolverKind.RESOLVED, "")
    assert laptop_search_domains(plain, conf, uplink) == ["corp.example", "lab.test"]
    assert laptop_search_domains(resolved, conf, uplink) == []
    assert laptop_search_domains(plain, tmp_path / "none", uplink) == []


def test_configure_resolved_refuses_a_catch_all_before_changing_anything(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    journal = journal_in(tmp_path)
    with pytest.raises(ValueError, match="catch every name"):
        configure_resolved(
            journal, link=TUN, servers=["169.254.0.1"], routing_domains=["."], runner=host
        )
    assert host.calls == []
    assert journal.contents().entries == ()


def test_a_failing_resolvectl_is_reported(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    host.failing[("resolvectl", "dns")] = (1, "Access denied")
    with pytest.raises(HostChangeFailed, match="Access denied"):
        configure_resolved(
            journal_in(tmp_path),
            link=TUN,
            servers=["169.254.0.1"],
            routing_domains=["cluster.local"],
            runner=host,
        )


def test_resolved_revert_when_resolved_is_gone(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    journal = journal_in(tmp_path)
    configure_resolved(
        journal, link=TUN, servers=["169.254.0.1"], routing_domains=["cluster.local"], runner=host
    )
    host.resolved_running = False
    report = journal.undo_all(host)
    assert report.removed
    assert report.notes == [f"systemd-resolved is not running; nothing to revert on {TUN}"]


def test_resolv_conf_edit_and_exact_undo(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    original = b"search corp.example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    path.write_bytes(original)
    journal = journal_in(tmp_path)
    edit = configure_resolv_conf(journal, servers=["169.254.0.1"], path=path)
    assert edit.original_nameservers == ("10.0.0.2", "10.0.0.3")
    assert edit.warnings == ()
    assert path.read_bytes().splitlines()[1] == b"nameserver 169.254.0.1"
    report = journal.undo_all(FakeHost())
    assert report.removed
    assert report.notes == []
    assert path.read_bytes() == original


def test_resolv_conf_edited_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(b"nameserver 10.0.0.2\n")
    journal = journal_in(tmp_path)
    configure_resolv_conf(journal, servers=["169.254.0.1"], path=path)
    with path.open("ab") as handle:
        handle.write(b"nameserver 192.168.1.1\n")
    report = journal.undo_all(FakeHost())
    assert path.read_bytes() == b"nameserver 10.0.0.2\nnameserver 192.168.1.1\n"
    assert len(report.notes) == 1
    assert "only ktpy's marked lines" in report.notes[0]


def test_resolv_conf_warnings(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(
        b"# ktpy session dead0001 begin\nnameserver 169.254.0.1\n# ktpy session dead0001 end\n"
        b"nameserver 10.0.0.2\noptions rotate\n"
    )
    edit = configure_resolv_conf(journal_in(tmp_path), servers=["169.254.0.2"], path=path)
    assert edit.original_nameservers == ("10.0.0.2",)
    assert any("options rotate" in w for w in edit.warnings)
    assert any("dead0001" in w and "clean --local" in w for w in edit.warnings)


def test_upstreams_are_read_before_the_change(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(PLAIN)
    choice = ResolverChoice(ResolverKind.RESOLV_CONF, "test")
    setup = configure_resolver(
        journal_in(tmp_path),
        choice,
        link=TUN,
        server="169.254.0.1",
        routing_domains=["cluster.local"],
        runner=FakeHost(),
        resolv_conf=path,
    )
    assert setup.upstreams == ("10.250.0.1",)
    assert upstream_nameservers(choice, path) == ["10.250.0.1"]  # ktpy's own left out


def test_upstreams_with_resolved_are_its_uplinks_not_its_stub(tmp_path: Path) -> None:
    uplink = tmp_path / "uplink.conf"
    uplink.write_bytes(b"# managed by resolved\nnameserver 10.250.0.1\nnameserver 127.0.0.53\n")
    choice = ResolverChoice(ResolverKind.RESOLVED, "test")
    assert upstream_nameservers(choice, tmp_path / "stub", uplink) == ["10.250.0.1"]
    assert upstream_nameservers(choice, tmp_path / "stub", tmp_path / "missing") == []
