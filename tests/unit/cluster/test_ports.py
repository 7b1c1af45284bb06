"""A Service's ports mapped to local ports."""

from __future__ import annotations

import pytest

from ktpy.cluster import ports, redirect
from ktpy.cluster.ports import Forward, ServicePortEntry
from ktpy.errors import (
    NoSelector,
    PortNotInService,
    UnresolvedTargetPort,
    UsageProblem,
)
from ktpy.params import PortMapping, parse_expose
from tests.unit.cluster.objects import user_service

# The test bed's echo Service: port 80 to the named target port http (8080 in the
# pods), port 9090 by number.
ECHO = (
    ServicePortEntry(80, "http", "http"),
    ServicePortEntry(9090, 9090, "alt"),
)
NAMED = {"http": 8080}


def forwards(text: str, entries: tuple[ServicePortEntry, ...] = ECHO) -> tuple[Forward, ...]:
    return ports.plan_forwards("echo", entries, parse_expose(text) if text else (), NAMED)


# --- ports ---------------------------------------------------------------------------------


def test_service_ports_read_numbers_names_and_defaults() -> None:
    service = user_service()
    service["spec"]["ports"] = [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"port": 53, "targetPort": "5353", "protocol": "UDP"},
        {"port": 9000},
    ]
    assert ports.service_ports(service) == (
        ServicePortEntry(80, "http", "http", "TCP"),
        ServicePortEntry(53, 5353, None, "UDP"),
        ServicePortEntry(9000, 9000, None, "TCP"),
    )


def test_remote_as_service_port_follows_its_named_target_port() -> None:
    assert forwards("3001:80") == (Forward(3001, 8080, 80, "http", "http"),)


def test_remote_as_target_port_number_resolved_through_the_pods() -> None:
    assert forwards("3001:8080") == (Forward(3001, 8080, 80, "http", "http"),)


def test_remote_as_port_name_and_as_target_port_name() -> None:
    entries = (ServicePortEntry(80, "web-api", "web"), ServicePortEntry(81, 7000, "other"))
    named = {"web-api": 8081}
    by_service_name = ports.plan_forwards("s", entries, [PortMapping(3001, "web")], named)
    by_target_name = ports.plan_forwards("s", entries, [PortMapping(3001, "web-api")], named)
    assert by_service_name == by_target_name == (Forward(3001, 8081, 80, "web", "web-api"),)


def test_a_number_that_is_a_port_and_another_entrys_target_port_means_the_service_port() -> None:
    entries = (ServicePortEntry(80, 8080, "a"), ServicePortEntry(8080, 9090, "b"))
    assert ports.plan_forwards("s", entries, [PortMapping(3001, 8080)], {}) == (
        Forward(3001, 9090, 8080, "b"),
    )


def test_a_name_that_is_a_port_name_and_another_entrys_target_name_means_the_port() -> None:
    entries = (ServicePortEntry(80, "api", "web"), ServicePortEntry(81, 7000, "api"))
    assert ports.plan_forwards("s", entries, [PortMapping(3001, "api")], {"api": 8000}) == (
        Forward(3001, 7000, 81, "api"),
    )


def test_a_bare_port_is_the_same_number_on_both_sides() -> None:
    assert forwards("9090") == (Forward(9090, 9090, 9090, "alt"),)


def test_without_expose_each_target_port_goes_to_the_same_local_number() -> None:
    assert forwards("") == (
        Forward(8080, 8080, 80, "http", "http"),
        Forward(9090, 9090, 9090, "alt"),
    )


def test_several_ports_at_once() -> None:
    assert forwards("3001:http,3002:9090") == (
        Forward(3001, 8080, 80, "http", "http"),
        Forward(3002, 9090, 9090, "alt"),
    )


def test_the_shadow_declares_the_named_target_port() -> None:
    (forward,) = forwards("3001:80")
    assert forward.shadow.name == "http"
    assert forward.shadow.port == 8080
    assert forward.describe() == "service port 80 (http) -> shadow port http=8080 -> local 3001"


def test_a_port_the_service_lacks_is_refused_with_what_it_has() -> None:
    with pytest.raises(PortNotInService) as caught:
        forwards("3001:81")
    assert caught.value.exit_code == 13
    assert "has no port 81" in caught.value.message
    assert "80 (http) -> http" in caught.value.message


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(PortNotInService, match="'grpc'"):
        forwards("3001:grpc")


def test_a_named_target_port_no_pod_declares_is_refused() -> None:
    with pytest.raises(UnresolvedTargetPort) as caught:
        ports.plan_forwards("echo", ECHO, [PortMapping(3001, 80)], {})
    assert caught.value.exit_code == 15
    assert "target port 'http'" in caught.value.message


def test_udp_only_ports_are_refused_and_skipped_by_default() -> None:
    entries = (ServicePortEntry(53, 53, "dns", "UDP"), ServicePortEntry(80, 8080, "web"))
    with pytest.raises(UsageProblem, match="UDP"):
        ports.plan_forwards("s", entries, [PortMapping(3001, 53)], {})
    assert ports.plan_forwards("s", entries, [], {}) == (Forward(8080, 8080, 80, "web"),)
    with pytest.raises(UsageProblem, match="no TCP port"):
        ports.plan_forwards("s", entries[:1], [], {})


def test_a_tcp_twin_of_a_udp_port_is_taken() -> None:
    entries = (ServicePortEntry(53, 53, "dns", "UDP"), ServicePortEntry(53, 53, "dns-tcp"))
    assert ports.plan_forwards("s", entries, [PortMapping(5300, 53)], {}) == (
        Forward(5300, 53, 53, "dns-tcp"),
    )


def test_the_shadows_usual_port_numbers_and_names_are_a_services_to_use() -> None:
    # The shadow moves its own sshd and dnsmasq instead (ShadowSpec, own_ports_avoiding).
    assert ports.plan_forwards("s", (ServicePortEntry(22, 2222),), [PortMapping(3001, 22)], {}) == (
        Forward(3001, 2222, 22),
    )
    assert ports.plan_forwards("s", (ServicePortEntry(22, "ssh"),), [], {"ssh": 22}) == (
        Forward(22, 22, 22, None, "ssh"),
    )


def test_two_service_ports_on_one_target_share_the_listener() -> None:
    entries = (ServicePortEntry(80, 8080, "a"), ServicePortEntry(8000, 8080, "b"))
    assert ports.plan_forwards("s", entries, [], {}) == (Forward(8080, 8080, 80, "a"),)
    with pytest.raises(UsageProblem, match="both go to target port 8080"):
        ports.plan_forwards("s", entries, [PortMapping(3001, 80), PortMapping(3002, 8000)], {})


def test_unexposed_ports_are_named() -> None:
    assert ports.unexposed_ports(ECHO, forwards("3001:80")) == [ECHO[1]]
    assert ports.unexposed_ports(ECHO, forwards("")) == []


def test_named_container_ports_first_seen_wins_tcp_only() -> None:
    specs = [
        {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        {"containers": [{"ports": [{"name": "http", "containerPort": 9999}]}]},
        {"containers": [{"ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        {"containers": [{"name": "no-ports"}]},
    ]
    assert ports.named_container_ports(specs) == {"http": 8080}


def test_a_service_without_selector_is_refused() -> None:
    service = user_service(selector={})
    with pytest.raises(NoSelector) as caught:
        redirect.check_selector(service)
    assert caught.value.exit_code == 14
    assert redirect.check_selector(user_service()) == {"app": "nginx"}
