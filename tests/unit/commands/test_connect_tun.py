from ipaddress import ip_address, ip_network
from pathlib import Path

from click.testing import CliRunner

from ktpy.cli import cli
from ktpy.commands.connect_tun import api_addresses, chosen_ranges


def test_include_adds_and_exclude_cuts_ranges() -> None:
    found = [ip_network("10.96.0.0/16"), ip_network("10.244.0.0/24")]
    got = chosen_ranges(found, [ip_network("172.30.0.0/24")], [ip_network("10.244.0.128/25")])
    assert got == (
        ip_network("10.96.0.0/16"),
        ip_network("10.244.0.0/25"),
        ip_network("172.30.0.0/24"),
    )


def test_exclude_of_a_whole_range_drops_it() -> None:
    found = [ip_network("10.96.0.0/16"), ip_network("10.244.0.0/24")]
    assert chosen_ranges(found, [], [ip_network("10.244.0.0/16")]) == (ip_network("10.96.0.0/16"),)


def test_duplicates_are_routed_once() -> None:
    found = [ip_network("10.96.0.0/16")]
    assert chosen_ranges(found, [ip_network("10.96.0.0/16")], []) == (ip_network("10.96.0.0/16"),)


def test_api_address_from_an_ip_url() -> None:
    assert api_addresses("https://10.250.0.1:6443") == (ip_address("10.250.0.1"),)
    assert api_addresses("https://[fd00::1]:6443") == (ip_address("fd00::1"),)


def test_pac_and_env_lines_need_a_socks_port_in_tun_mode(tmp_path: Path) -> None:
    """tun2socks opens no SOCKS5 port unless asked, so it has none to print: said
    before anything changes (no root, no cluster needed to hear it)."""
    env = {"KTPY_CONFIG": str(tmp_path / "none.yaml")}
    for flag in ("--print-pac", "--print-env"):
        result = CliRunner().invoke(cli, ["connect", flag], env=env)
        assert result.exit_code == 2, result.output
        assert "need a SOCKS5 port in tun2socks mode" in result.output
