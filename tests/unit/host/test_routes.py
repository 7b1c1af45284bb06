import json
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from ktpy.errors import HostChangeFailed
from ktpy.host.journal import Journal, Owner
from ktpy.host.routes import (
    HostRoute,
    RoutePlan,
    add_routes,
    collapse,
    conflicts,
    parse_routes,
    plan_routes,
    read_host_routes,
    split_around,
)
from ktpy.host.runner import Completed
from tests.unit.host.fakehost import FakeHost

TUN = "ktpy-ab12cd34"
SERVICES = ip_network("10.96.0.0/16")
PODS = ip_network("10.244.0.0/16")


def route(dst: str, dev: str = "eth0", **kw: str) -> HostRoute:
    return HostRoute(ip_network(dst), device=dev, **kw)


# What `ip -j -4 route show table all` says on a laptop with WireGuard and a VPN.
IP_JSON_V4 = json.dumps(
    [
        {"dst": "default", "gateway": "192.168.1.1", "dev": "wlan0", "protocol": "dhcp"},
        {"dst": "10.0.0.0/8", "dev": "vpn0", "scope": "link"},
        {"dst": "192.168.1.0/24", "dev": "wlan0", "protocol": "kernel", "prefsrc": "192.168.1.5"},
        {"dst": "100.64.0.0/10", "dev": "wg0", "table": "52"},
        {"type": "throw", "dst": "127.0.0.0/8", "table": "52"},
        {"type": "local", "dst": "192.168.1.5", "dev": "wlan0", "table": "local"},
        {"type": "broadcast", "dst": "192.168.1.255", "dev": "wlan0", "table": "local"},
        {"type": "blackhole", "dst": "172.31.0.0/16"},
    ]
)


def host_routes() -> list[HostRoute]:
    return parse_routes(IP_JSON_V4, 4)


def test_parse_routes() -> None:
    routes = host_routes()
    assert routes[0] == HostRoute(
        ip_network("0.0.0.0/0"), "main", "unicast", "wlan0", "192.168.1.1", "dhcp"
    )
    assert routes[0].is_default
    assert routes[3].table == "52"
    assert routes[5].destination == ip_network("192.168.1.5/32")
    assert routes[7].describe() == "blackhole 172.31.0.0/16"
    assert routes[0].describe() == "0.0.0.0/0 via 192.168.1.1 dev wlan0"
    assert routes[3].describe() == "100.64.0.0/10 dev wg0 table 52"
    assert parse_routes('[{"dst": "default", "dev": "eth0"}]', 6)[0].destination == ip_network(
        "::/0"
    )


def test_read_host_routes_asks_for_every_table_of_both_families() -> None:
    seen: list[tuple[str, ...]] = []

    def runner(argv: Sequence[str]) -> Completed:
        seen.append(tuple(argv))
        return Completed(tuple(argv), 0, "[]", "")

    assert read_host_routes(runner) == []
    assert seen == [
        ("ip", "-j", "-4", "route", "show", "table", "all"),
        ("ip", "-j", "-6", "route", "show", "table", "all"),
    ]


def test_conflicts_are_overlaps_either_way_but_not_defaults_local_or_throw() -> None:
    routes = host_routes()
    assert [r.device for r in conflicts(SERVICES, routes)] == ["vpn0"]  # 10/8 holds it
    assert conflicts(ip_network("10.0.0.0/7"), routes)[0].device == "vpn0"  # it holds 10/8
    assert conflicts(ip_network("100.100.0.0/16"), routes)[0].table == "52"  # policy table
    assert conflicts(ip_network("127.0.0.0/16"), routes) == []  # throw and local only
    assert conflicts(ip_network("8.8.8.0/24"), routes) == []  # only the default route
    assert conflicts(ip_network("172.31.5.0/24"), routes)[0].type == "blackhole"
    assert conflicts(ip_network("fd00::/108"), routes) == []  # other family


def test_ktpys_own_device_is_no_conflict() -> None:
    routes = [route("10.96.0.0/16", TUN)]
    assert conflicts(SERVICES, routes, own_devices=(TUN,)) == []


def test_an_overlapping_range_is_skipped_with_both_named() -> None:
    plan = plan_routes([SERVICES, ip_network("172.20.0.0/16")], host_routes())
    assert plan.add == (ip_network("172.20.0.0/16"),)
    [skipped] = plan.skipped
    assert skipped.wanted == SERVICES
    assert skipped.message() == (
        "not routing 10.96.0.0/16: it overlaps the host's route 10.0.0.0/8 dev vpn0"
        " (a VPN or local network?); use force to route it anyway"
    )
    assert plan.warnings() == [skipped.message()]


def test_force_routes_an_overlapping_range_and_says_so() -> None:
    plan = plan_routes([SERVICES], host_routes(), force=True)
    assert plan.add == (SERVICES,)
    assert plan.skipped == ()
    assert plan.warnings() == [
        "routing 10.96.0.0/16 although it overlaps 10.0.0.0/8 dev vpn0 (forced)"
    ]


def test_force_cannot_add_a_second_route_for_the_same_prefix() -> None:
    plan = plan_routes([PODS], [route("10.244.0.0/16", "vpn0")], force=True)
    assert plan.add == ()
    assert "already routes it: 10.244.0.0/16 dev vpn0" in plan.skipped[0].reason


def test_the_api_server_is_cut_out_of_a_range() -> None:
    api = ip_address("10.96.0.1")
    plan = plan_routes([SERVICES], [], never_route={api: "API server"})
    assert not any(api in n for n in plan.add)
    assert sum(n.num_addresses for n in plan.add) == SERVICES.num_addresses - 1
    assert len(plan.add) == 16  # /16 minus one address: one network per bit
    assert plan.splits[0].message() == "routing 10.96.0.0/16 except 10.96.0.1 (API server)"


def test_addresses_outside_every_range_change_nothing() -> None:
    plan = plan_routes([SERVICES], [], never_route={ip_address("10.250.0.1"): "API server"})
    assert plan == RoutePlan(add=(SERVICES,))


def test_a_range_that_is_only_the_api_server_is_skipped() -> None:
    plan = plan_routes(
        [ip_network("10.250.0.1/32")], [], never_route={ip_address("10.250.0.1"): "API server"}
    )
    assert plan.add == ()
    assert plan.skipped[0].reason == "it is only the API server's own address"


def test_several_addresses_in_one_range() -> None:
    keep = [ip_address("10.244.0.10"), ip_address("10.244.200.3")]
    pieces = split_around(PODS, keep)
    assert sum(n.num_addresses for n in pieces) == PODS.num_addresses - 2
    assert not any(a in n for a in keep for n in pieces)
    assert pieces == sorted(pieces, key=lambda n: int(n.network_address))


def test_split_around_ignores_other_families_and_outside_addresses() -> None:
    assert split_around(PODS, [ip_address("fd00::1"), ip_address("10.0.0.1")]) == [PODS]


def test_a_default_sized_range_is_never_routed() -> None:
    plan = plan_routes([ip_network("0.0.0.0/0")], [])
    assert plan.add == ()
    assert "every address" in plan.skipped[0].reason


def test_nested_and_duplicate_ranges_are_merged_per_family() -> None:
    merged = collapse(
        [ip_network("10.96.0.0/12"), SERVICES, SERVICES, ip_network("fd00::/108"), PODS]
    )
    assert merged == [ip_network("10.96.0.0/12"), PODS, ip_network("fd00::/108")]


def test_ipv6_ranges() -> None:
    plan = plan_routes(
        [ip_network("fd00:10:96::/108")],
        [route("fd00:10::/32", "vpn0"), route("::/0", "wlan0")],
    )
    assert plan.add == ()
    assert "fd00:10::/32 dev vpn0" in plan.skipped[0].reason


def test_add_routes_records_each_route_before_adding_it(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    journal = Journal.create(tmp_path, "ab12cd34", Owner(1, 2, "b"))

    def journal_holds_the_route(argv: tuple[str, ...]) -> None:
        if argv[:3] == ("ip", "route", "add"):
            assert f'"destination":"{argv[3]}"'.encode() in journal.path.read_bytes()

    host.before = journal_holds_the_route
    added = add_routes(
        journal, TUN, [SERVICES, PODS], source={4: ip_address("169.254.0.1")}, runner=host
    )
    assert added == [SERVICES, PODS]
    assert host.calls[0] == (
        "ip", "route", "add", "10.96.0.0/16", "dev", TUN, "src", "169.254.0.1",
    )  # fmt: skip
    assert host.routes == {("main", "10.96.0.0/16", TUN), ("main", "10.244.0.0/16", TUN)}
    report = journal.undo_all(host)
    assert report.removed
    assert host.routes == set()


def test_a_route_the_kernel_refuses_stops_connect_with_the_reason(tmp_path: Path) -> None:
    host = FakeHost(links={"lo", TUN})
    host.routes.add(("main", "10.96.0.0/16", "vpn0"))
    journal = Journal.create(tmp_path, "ab12cd34", Owner(1, 2, "b"))
    with pytest.raises(HostChangeFailed, match="File exists"):
        add_routes(journal, TUN, [SERVICES], runner=host)
    # Recorded anyway, and its undo leaves the VPN's route alone.
    host.links.add("vpn0")
    assert journal.undo_all(host).removed
    assert host.routes == {("main", "10.96.0.0/16", "vpn0")}
