from collections.abc import Sequence
from pathlib import Path

from ktpy.host import snapshot
from ktpy.host.runner import Completed, Runner


def fake_runner(outputs: dict[tuple[str, ...], str], resolved: bool = False) -> Runner:
    def runner(argv: Sequence[str]) -> Completed:
        args = tuple(argv)
        if args[0] == "busctl":
            return Completed(args, 0, "b true\n" if resolved else "b false\n", "")
        if args in outputs:
            return Completed(args, 0, outputs[args], "")
        return Completed(args, 1, "", "Operation not supported")

    return runner


def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "resolv.conf").write_bytes(b"nameserver 10.250.0.1\n")
    (tmp_path / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    sys = tmp_path / "sys"
    (sys / "net/ipv4").mkdir(parents=True)
    (sys / "net/ipv4/ip_forward").write_text("0\n")
    return {"resolv_conf": tmp_path / "resolv.conf", "hosts": tmp_path / "hosts", "proc_sys": sys}


ADDR = (
    "2: eth0: <BROADCAST,UP> mtu 1500\n"
    "    inet 10.251.40.2/24 scope global dynamic eth0\n"
    "       valid_lft 86123sec preferred_lft 86123sec\n"
)


def test_sections_and_volatile_values(tmp_path: Path) -> None:
    runner = fake_runner({("ip", "addr", "show"): ADDR, ("nft", "-s", "list", "ruleset"): ""})
    snap = snapshot.take(runner, **files(tmp_path))
    assert set(snap.sections) == {
        "ip -4 rule",
        "ip -6 rule",
        "ip -4 route table all",
        "ip -6 route table all",
        "ip link",
        "ip addr",
        "nft ruleset",
        "sysctls",
        "/etc/hosts",
        "/etc/resolv.conf",
    }
    assert "valid_lft - preferred_lft -" in snap.sections["ip addr"]
    assert "net.ipv4.ip_forward = 0\n" in snap.sections["sysctls"]
    assert "net.ipv6.conf.all.forwarding = <missing>" in snap.sections["sysctls"]
    assert snap.sections["/etc/resolv.conf"] == "nameserver 10.250.0.1\n"
    # A failed command is part of the picture, not an exception.
    assert snap.sections["ip -4 rule"].startswith("<ip -4 rule show: exit 1")


def test_resolvectl_status_only_with_resolved(tmp_path: Path) -> None:
    status = ("resolvectl", "status", "--no-pager")
    snap = snapshot.take(fake_runner({status: "Global\n"}, resolved=True), **files(tmp_path))
    assert snap.sections["resolvectl status"] == "Global\n"


def test_equal_snapshots_have_no_diff_and_a_change_shows(tmp_path: Path) -> None:
    paths = files(tmp_path)
    runner = fake_runner({("ip", "addr", "show"): ADDR})
    before = snapshot.take(runner, **paths)
    later = ADDR.replace("86123sec", "85000sec")  # time passed: not a change
    assert (
        snapshot.diff(before, snapshot.take(fake_runner({("ip", "addr", "show"): later}), **paths))
        == []
    )
    paths["resolv_conf"].write_bytes(b"nameserver 169.254.0.1\nnameserver 10.250.0.1\n")
    changed = snapshot.diff(before, snapshot.take(runner, **paths))
    assert "+nameserver 169.254.0.1" in changed
    assert changed[0] == "--- /etc/resolv.conf (before)"


def test_json_round_trip(tmp_path: Path) -> None:
    snap = snapshot.take(fake_runner({}), **files(tmp_path))
    assert snapshot.Snapshot.from_json(snap.to_json()) == snap
