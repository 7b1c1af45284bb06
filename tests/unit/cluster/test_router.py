"""The mesh router's pure parts: protocols, HAProxy's config and map, runtime
commands and answers, and the router's objects."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ktpy.cluster import labels, router
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import SessionMeta
from ktpy.cluster.ports import service_ports
from ktpy.cluster.router import PortProtocol, RouterPort
from ktpy.errors import UnresolvedTargetPort
from tests.unit.cluster.pss import restricted_violations

NOW = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)
META = SessionMeta("m3sh0001", Role.MESH, "bob@lap", NOW, target="service/echo")
HTTP = RouterPort(80, 8080, "http", "http", PortProtocol.HTTP1)
GRPC = RouterPort(9090, 9091, "grpc", None, PortProtocol.H2C)
RAW = RouterPort(7000, 7001, "tcp-raw", None, PortProtocol.TCP)


def as_data(body: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(body))
    assert result == body
    return result


# --- protocols and ports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_protocol", "name", "expected"),
    [
        ("kubernetes.io/h2c", None, PortProtocol.H2C),
        ("grpc", "http", PortProtocol.H2C),  # appProtocol beats the name
        ("GRPC", None, PortProtocol.H2C),
        ("http", "grpc-api", PortProtocol.HTTP1),
        ("tcp", "http", PortProtocol.TCP),
        ("kubernetes.io/ws", None, PortProtocol.HTTP1),
        ("example.com/custom", "grpc-api", PortProtocol.H2C),  # unknown: the name decides
        (None, "grpc-api", PortProtocol.H2C),
        (None, "http2-web", PortProtocol.H2C),
        (None, "h2c-web", PortProtocol.H2C),
        (None, "grpc", PortProtocol.H2C),
        (None, "http-web", PortProtocol.HTTP1),
        (None, "tcp-db", PortProtocol.TCP),
        (None, "TCP-db", PortProtocol.TCP),
        (None, "tcp", PortProtocol.TCP),
        (None, "web", PortProtocol.HTTP1),
        (None, "grpcweb", PortProtocol.HTTP1),
        (None, None, PortProtocol.HTTP1),
        ("", "", PortProtocol.HTTP1),
    ],
)
def test_port_protocol(app_protocol: str | None, name: str | None, expected: PortProtocol) -> None:
    assert router.port_protocol(app_protocol, name) is expected


def test_router_ports_from_a_services_ports() -> None:
    service = {
        "spec": {
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web", "appProtocol": "http"},
                {"name": "api", "port": 9090, "targetPort": 9091, "appProtocol": "grpc"},
                {"name": "tcp-db", "port": 5432, "targetPort": "5432"},
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
            ]
        }
    }
    entries = service_ports(service)
    assert entries[1].app_protocol == "grpc"
    assert entries[2].app_protocol is None
    assert router.router_ports("echo", entries, {"web": 8080}) == (
        RouterPort(80, 8080, "http", "web", PortProtocol.HTTP1),
        RouterPort(9090, 9091, "api", None, PortProtocol.H2C),
        RouterPort(5432, 5432, "tcp-db", None, PortProtocol.TCP),
    )
    with pytest.raises(UnresolvedTargetPort):
        router.router_ports("echo", entries, {})


# --- HAProxy's config ----------------------------------------------------------------------


def _sections(config: str) -> dict[str, list[str]]:
    """Section header -> its lines (stripped, no comments)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in config.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith(" "):
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections


def test_config_routes_http1_ports_by_the_header() -> None:
    config = router.haproxy_config(header="Version", ports=[HTTP], stuntman_ip="10.96.0.9")
    sections = _sections(config)
    assert "stats socket ipv4@127.0.0.1:2225 level admin" in sections["global"]
    assert "daemon" not in sections["global"]
    assert "log stderr format raw local0 info" in sections["global"]
    defaults = sections["defaults"]
    assert "mode http" in defaults
    assert "timeout tunnel 1h" in defaults
    assert {"timeout client 1h", "timeout server 1h"} <= set(defaults)
    assert not any("http-server-close" in line for line in defaults)
    assert sections["frontend port_80"] == [
        "bind :8080",
        "http-request set-var(txn.mesh) req.hdr(version),lower,map(/tmp/ktpy/versions.map)",
        "use_backend mesh_80 if { var(txn.mesh) -m found }",
        "default_backend stuntman_80",
    ]
    assert sections["backend mesh_80"] == [
        "http-request set-dst var(txn.mesh)",
        "http-request set-dst-port int(80)",
        "http-reuse never",
        "server mesh 0.0.0.0:0",
    ]
    assert sections["backend stuntman_80"] == ["server stuntman 10.96.0.9:80"]


def test_config_speaks_h2_to_h2c_ports() -> None:
    config = router.haproxy_config(
        header="x-dev", ports=[GRPC], stuntman_ip="10.96.0.9", run_dir="/run/r/"
    )
    sections = _sections(config)
    assert sections["frontend port_9090"][:2] == [
        "bind :9091",
        "http-request set-var(txn.mesh) req.hdr(x-dev),lower,map(/run/r/versions.map)",
    ]
    assert sections["backend mesh_9090"][-1] == "server mesh 0.0.0.0:0 proto h2"
    assert sections["backend stuntman_9090"] == ["server stuntman 10.96.0.9:9090 proto h2"]


def test_config_passes_tcp_ports_to_the_stuntman_unrouted() -> None:
    config = router.haproxy_config(header="version", ports=[HTTP, RAW], stuntman_ip="10.96.0.9")
    sections = _sections(config)
    assert sections["frontend port_7000"] == [
        "mode tcp",
        "option tcplog",
        "bind :7001",
        "default_backend stuntman_7000",
    ]
    assert sections["backend stuntman_7000"] == ["mode tcp", "server stuntman 10.96.0.9:7000"]
    assert "backend mesh_7000" not in sections
    assert "backend mesh_80" in sections


def test_config_one_frontend_per_target_port() -> None:
    twin = RouterPort(8081, 8080, "alt", None, PortProtocol.HTTP1)
    sections = _sections(
        router.haproxy_config(header="version", ports=[HTTP, twin], stuntman_ip="10.0.0.1")
    )
    assert [name for name in sections if name.startswith("frontend")] == ["frontend port_80"]


def test_config_ipv6_stuntman_and_admin_port() -> None:
    config = router.haproxy_config(
        header="version", ports=[GRPC], stuntman_ip="fd00::0010", admin_port=3000
    )
    assert "server stuntman [fd00::10]:9090 proto h2" in config
    assert "stats socket ipv4@127.0.0.1:3000 level admin" in config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"header": "x version"}, "not an HTTP header name"),
        ({"header": ""}, "not an HTTP header name"),
        ({"ports": []}, "at least one"),
        ({"stuntman_ip": "stuntman.dev.svc"}, "not an IP address"),
        ({"ports": [RouterPort(80, 2225, None, None, PortProtocol.HTTP1)]}, "admin port"),
        ({"ports": [RouterPort(80, 70000, None, None, PortProtocol.HTTP1)]}, "out of range"),
    ],
)
def test_config_refuses(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"header": "version", "ports": [HTTP], "stuntman_ip": "10.0.0.1"}
    with pytest.raises(ValueError, match=message):
        router.haproxy_config(**(args | kwargs))


# --- the map and the runtime API -------------------------------------------------------------


def test_versions_map() -> None:
    assert router.versions_map({"b": "10.96.1.2", "a": "10.96.1.1"}) == (
        "a 10.96.1.1\nb 10.96.1.2\n"
    )
    assert router.versions_map({}) == ""
    with pytest.raises(ValueError, match="lowercase DNS label"):
        router.versions_map({"A": "10.0.0.1"})
    with pytest.raises(ValueError, match="lowercase DNS label"):
        router.versions_map({"a b": "10.0.0.1"})
    with pytest.raises(ValueError, match="not an IP address"):
        router.versions_map({"a": "mesh-a.dev.svc"})


def test_route_commands() -> None:
    assert router.add_route("blue", "10.96.1.1") == (
        "del map /tmp/ktpy/versions.map blue;add map /tmp/ktpy/versions.map blue 10.96.1.1"
    )
    assert router.del_route("blue") == "del map /tmp/ktpy/versions.map blue"
    assert router.show_map(run_dir="/r") == "show map /r/versions.map"
    assert router.SHOW_INFO == "show info"
    with pytest.raises(ValueError, match="DNS label"):
        router.add_route("blue;shutdown", "10.0.0.1")
    with pytest.raises(ValueError, match="DNS label"):
        router.del_route("Blue")
    with pytest.raises(ValueError, match="IP address"):
        router.add_route("blue", "10.0.0.1;x")


def test_runtime_exchange_is_one_line() -> None:
    assert router.runtime_exchange("show info") == b"show info\n"
    with pytest.raises(ValueError, match="one line"):
        router.runtime_exchange("show info\nshutdown sessions")


# What HAProxy 2.6.12 answered in the integration test's pod.
SHOW_MAP = b"0x563aa86cb460 a 127.0.0.2\n0x7f9930047c60 b 127.0.0.3\n\n"
SHOW_INFO = (
    b"Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nNbthread: 2\n"
    b"Nbproc: 1\nProcess_num: 1\nPid: 31749\nUptime: 0d 0h00m05s\nUptime_sec: 5\n\n"
)


def test_parse_answers() -> None:
    assert router.parse_map(router.parse_answer(SHOW_MAP)) == {"a": "127.0.0.2", "b": "127.0.0.3"}
    assert router.parse_map("") == {}
    info = router.parse_info(router.parse_answer(SHOW_INFO))
    assert info["Pid"] == "31749"
    assert info["Uptime_sec"] == "5"
    assert info["Uptime"] == "0d 0h00m05s"
    assert info["Version"] == "2.6.12-1+deb12u4"
    # add_route on a value with no route yet: the del's "not found", then the add's silence.
    assert router.parse_answer(b"Key not found.\n\n\n") == "Key not found."
    assert router.parse_answer(b"\n\n") == ""


@pytest.mark.parametrize(
    "answer",
    [
        b"Unknown command, but maybe one of the following ones is a better match:\n  help\n\n",
        b"Unknown map identifier. Please use #<id> or <file>.\n\n",
        b"Permission denied\n\n",
    ],
)
def test_parse_answer_raises_on_a_refusal(answer: bytes) -> None:
    with pytest.raises(router.RuntimeRefused):
        router.parse_answer(answer)


# --- the objects -----------------------------------------------------------------------------


def test_names_and_selector() -> None:
    assert router.router_names("echo") == router.RouterNames(
        "echo-kt-router", "echo-kt-router", "echo-kt-stuntman"
    )
    assert router.router_selector("echo") == {
        "ktpy.dev/role": "router",
        "ktpy.dev/mesh-of": "echo",
    }


def _secret(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "authorized_keys": ["ssh-ed25519 AAAA1 alice", "ssh-ed25519 AAAA2 bob\n"],
        "host_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
        "host_public_key": "ssh-ed25519 HOST\n",
        "config": "global\n",
        "routes": {"b": "10.96.1.2", "a": "10.96.1.1"},
    }
    return as_data(router.router_secret("echo-kt-router", "dev", META, **(args | overrides)))


def test_router_secret() -> None:
    secret = _secret()
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "authorized_keys": "ssh-ed25519 AAAA1 alice\nssh-ed25519 AAAA2 bob\n",
        "ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
        "ssh_host_ed25519_key.pub": "ssh-ed25519 HOST\n",
        "haproxy.cfg": "global\n",
        "versions.map": "a 10.96.1.1\nb 10.96.1.2\n",
    }
    assert "immutable" not in secret  # sessions join and leave
    assert secret["metadata"]["labels"][labels.ROLE] == "router"
    assert secret["metadata"]["labels"][labels.SESSION] == "m3sh0001"
    assert base64.b64decode(_secret(authorized_keys=[])["data"]["authorized_keys"]) == b""


@pytest.mark.parametrize(
    "keys",
    [["-----BEGIN OPENSSH PRIVATE KEY-----"], ["ssh-rsa AAAA x"], ["ssh-ed25519 A\nssh-ed25519 B"]],
)
def test_router_secret_takes_only_public_key_lines(keys: list[str]) -> None:
    with pytest.raises(ValueError, match="one ssh-ed25519"):
        _secret(authorized_keys=keys)


def _deployment(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "image": "ghcr.io/ktpy/shadow:0.1.0",
        "meta": META,
        "secret_name": "echo-kt-router",
        "ports": [HTTP, GRPC, RAW],
        "mesh_of": "echo",
        "ssh_port": 2222,
    }
    return as_data(router.router_deployment("echo-kt-router", "dev", **(args | overrides)))


def test_router_deployment() -> None:
    deployment = _deployment(image_pull_secrets=["regcred"])
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert deployment["metadata"]["name"] == "echo-kt-router"
    assert deployment["metadata"]["labels"][labels.ROLE] == "router"
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["selector"] == {"matchLabels": router.router_selector("echo")}
    template = spec["template"]
    pod_labels = template["metadata"]["labels"]
    assert labels.selector_matches(router.router_selector("echo"), pod_labels)
    assert pod_labels[labels.SESSION] == "m3sh0001"
    assert pod_labels[labels.MANAGED_BY] == "ktpy"
    assert labels.HEARTBEAT not in template["metadata"]["annotations"]
    assert template["metadata"]["annotations"][labels.OWNER] == "bob@lap"

    assert restricted_violations(template) == []
    pod_spec = template["spec"]
    assert pod_spec["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    assert pod_spec["volumes"] == [
        {"name": "session-secret", "secret": {"secretName": "echo-kt-router", "defaultMode": 0o440}}
    ]
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["automountServiceAccountToken"] is False
    (container,) = pod_spec["containers"]
    assert container["ports"] == [
        {"name": "kt-ssh", "containerPort": 2222, "protocol": "TCP"},
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "p9091", "containerPort": 9091, "protocol": "TCP"},
        {"name": "p7001", "containerPort": 7001, "protocol": "TCP"},
    ]
    assert container["env"] == [
        {"name": "KTPY_SSH_PORT", "value": "2222"},
        {"name": "KTPY_ROLE", "value": "router"},
    ]
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert container["volumeMounts"] == [
        {"name": "session-secret", "mountPath": "/etc/ktpy/secret", "readOnly": True}
    ]


def test_router_deployment_refuses_clashing_ports() -> None:
    with pytest.raises(ValueError, match="ssh port"):
        _deployment(ssh_port=8080)
    with pytest.raises(ValueError, match="admin_port must differ"):
        _deployment(ssh_port=2225)
    with pytest.raises(ValueError, match="at least one port"):
        _deployment(ports=[])
    named_twice = RouterPort(81, 8081, "alt", "http", PortProtocol.HTTP1)
    with pytest.raises(ValueError, match="listed twice"):
        _deployment(ports=[HTTP, named_twice])
    # Two Service ports on one target port: one container port.
    twin = RouterPort(8081, 8080, "alt", None, PortProtocol.HTTP1)
    (container,) = _deployment(ports=[HTTP, twin])["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [2222, 8080]


ORIGINAL = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echo", "namespace": "dev", "resourceVersion": "9"},
    "spec": {
        "type": "NodePort",
        "clusterIP": "10.96.0.5",
        "selector": {"app": "echo"},
        "ports": [
            {
                "name": "http",
                "port": 80,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
                "nodePort": 30080,
            },
            {"name": "metrics", "port": 9090, "targetPort": 9091, "protocol": "TCP"},
        ],
    },
}


def test_stuntman_keeps_the_original_selector_and_ports() -> None:
    service = as_data(router.stuntman_service("echo-kt-stuntman", "dev", ORIGINAL, META))
    assert service["metadata"]["name"] == "echo-kt-stuntman"
    assert service["metadata"]["labels"][labels.ROLE] == "stuntman"
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {"app": "echo"},
        "ports": [
            {
                "name": "http",
                "port": 80,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
            },
            {"name": "metrics", "port": 9090, "targetPort": 9091, "protocol": "TCP"},
        ],
    }


def test_stuntman_needs_a_selector() -> None:
    original = {**ORIGINAL, "spec": {**ORIGINAL["spec"], "selector": {}}}
    with pytest.raises(ValueError, match="needs a selector"):
        router.stuntman_service("echo-kt-stuntman", "dev", original, META)


# --- members ------------------------------------------------------------------------------


def _secret_with(keys: list[str], routes: dict[str, str]) -> dict[str, Any]:
    from ktpy.cluster import manifests as m

    return {
        "metadata": {"name": "web-kt-router", "resourceVersion": "5"},
        "data": {
            m.AUTHORIZED_KEYS: m.b64("".join(k + "\n" for k in keys)),
            router.MAP_FILE: m.b64(router.versions_map(routes)),
            m.HOST_KEY + ".pub": m.b64("ssh-ed25519 AAAAhost ktpy-host-x\n"),
        },
    }


def test_a_member_is_added_and_removed_with_its_key_and_route() -> None:
    secret = _secret_with(["ssh-ed25519 AAAAa ktpy-client-s1"], {"a": "10.96.0.10"})
    added = router.secret_with_member(
        secret, key="ssh-ed25519 AAAAb ktpy-client-s2", route=("b", "10.96.0.11")
    )
    assert added["metadata"]["resourceVersion"] == "5"  # the write stays conditional
    assert router.secret_routes(added) == {"a": "10.96.0.10", "b": "10.96.0.11"}
    again = router.secret_with_member(
        added, key="ssh-ed25519 AAAAb ktpy-client-s2", route=("b", "10.96.0.11")
    )
    assert again == added  # idempotent: no second key line
    removed = router.secret_with_member(added, key="ssh-ed25519 AAAAb ktpy-client-s2", remove="b")
    assert router.secret_routes(removed) == {"a": "10.96.0.10"}
    assert removed["data"] == secret["data"]
    assert router.host_public_key(secret) == "ssh-ed25519 AAAAhost ktpy-host-x"


def test_a_dead_member_is_taken_out_by_its_key_comment() -> None:
    secret = _secret_with(
        ["ssh-ed25519 AAAAa ktpy-client-s1", "ssh-ed25519 AAAAb ktpy-client-s2"],
        {"a": "10.96.0.10", "b": "10.96.0.11"},
    )
    pruned = router.secret_without_member(secret, session="s1", value="a")
    assert router.secret_routes(pruned) == {"b": "10.96.0.11"}
    assert pruned == _secret_with(["ssh-ed25519 AAAAb ktpy-client-s2"], {"b": "10.96.0.11"})


def test_the_routers_ssh_port_avoids_the_services_ports_and_the_admin_port() -> None:
    port = router.RouterPort(80, 2222, "http", None, router.PortProtocol.HTTP1)
    assert router.router_ssh_port([port]) not in (2222, router.ADMIN_PORT)
    assert router.router_ssh_port([]) == 2222
