import json
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import cast

import pytest
from click.testing import CliRunner

from ktpy.cli import cli
from ktpy.cluster.name_watch import KnownNames
from ktpy.cluster.ranges import Ranges
from ktpy.commands.connect_tun import (
    ClusterFacts,
    api_addresses,
    check_include,
    chosen_ranges,
    degraded_note,
    routed_families,
)
from ktpy.errors import UsageProblem
from ktpy.host.runner import Completed, Runner


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


def _routes_runner(v4: str) -> Runner:
    def runner(argv: Sequence[str]) -> Completed:
        return Completed(tuple(argv), 0, v4 if "-4" in argv else "[]", "")

    return runner


LAPTOP_ROUTES = json.dumps(
    [
        {"dst": "default", "gateway": "10.251.3.1", "dev": "eth0"},
        {"dst": "10.251.3.0/24", "dev": "eth0", "protocol": "kernel"},
    ]
)


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("fd00::/108", "only IPv4"),
        ("0.0.0.0/0", "every address"),
        ("10.251.0.0/16", "overlaps this machine's route 10.251.3.0/24 dev eth0"),
    ],
)
def test_an_include_cidr_ktpy_would_not_route_is_refused(cidr: str, message: str) -> None:
    with pytest.raises(UsageProblem, match=message):
        check_include([ip_network(cidr)], force=False, runner=_routes_runner(LAPTOP_ROUTES))


def test_an_include_cidr_clear_of_the_laptops_routes_or_forced_passes() -> None:
    runner = _routes_runner(LAPTOP_ROUTES)
    check_include([ip_network("172.30.0.0/24")], force=False, runner=runner)
    check_include([ip_network("10.251.0.0/16")], force=True, runner=runner)


def _facts(*, service_guessed: bool, pods_guessed: bool, namespaces: bool) -> ClusterFacts:
    service = Ranges((ip_network("10.96.0.0/16"),), "x", guessed=service_guessed)
    pods = Ranges((ip_network("10.244.0.0/24"),), "y", guessed=pods_guessed)
    watch = cast(KnownNames, object()) if namespaces else None
    return ClusterFacts(
        service, pods, "cluster.local", "z", frozenset(), "", frozenset(), watch,
        cast(KnownNames, object()),
    )  # fmt: skip


def test_without_the_cluster_role_connect_says_so_in_one_line() -> None:
    full = _facts(service_guessed=False, pods_guessed=False, namespaces=True)
    assert degraded_note(full) is None
    note = degraded_note(_facts(service_guessed=True, pods_guessed=True, namespaces=False))
    assert note is not None
    assert "\n" not in note
    assert "docs/rbac/connect-ranges.yaml" in note
    assert "the service range, the pod range, other namespaces' names" in note


def test_pac_and_env_lines_need_a_socks_port_in_tun_mode(tmp_path: Path) -> None:
    """tun2socks opens no SOCKS5 port unless asked, so it has none to print: said
    before anything changes (no root, no cluster needed to hear it)."""
    env = {"KTPY_CONFIG": str(tmp_path / "none.yaml")}
    for flag in ("--print-pac", "--print-env"):
        result = CliRunner().invoke(cli, ["connect", flag], env=env)
        assert result.exit_code == 2, result.output
        assert "need a SOCKS5 port in tun2socks mode" in result.output


def test_a_clusters_ipv6_range_is_left_unrouted_and_said_in_one_line() -> None:
    chosen = (ip_network("10.96.0.0/16"), ip_network("fd00:10:96::/112"))
    routed, line = routed_families(chosen)
    assert routed == (ip_network("10.96.0.0/16"),)
    assert line == (
        "Not routed: fd00:10:96::/112: the TUN stack carries IPv4 only "
        "(IPv6 addresses work through the SOCKS5 proxy)"
    )
    assert routed_families(routed) == (routed, None)
