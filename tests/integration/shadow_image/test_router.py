"""The mesh router (KTPY_ROLE=router) with the real HAProxy 2.6 of the image,
configured by ktpy's own builders, in a pod-like namespace.

The router's pod network namespace also holds the Services it sends to, each
a ktbed-echo answering with its own name on a loopback address: the stuntman
(the real pods) on 127.0.0.4, developer A's mesh Service on 127.0.0.2, B's on
127.0.0.3. As in a cluster, the Service ports (80 HTTP, 9090 gRPC, 7000 TCP)
differ from the target ports the router listens on (8080, 9091, 7001).
Clients come from the host side of the pod's veth, like other pods."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import websocket
from paramiko.ssh_exception import AuthenticationException

from ktpy.cluster import router
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import SessionMeta
from ktpy.cluster.router import PortProtocol, RouterPort

from . import _image, _netns, _pod, _workloads
from ._servers import TcpServer
from .conftest import StartPod

pytestmark = [pytest.mark.integration, pytest.mark.root]

STUNTMAN, A, B = "127.0.0.4", "127.0.0.2", "127.0.0.3"
WHO = {STUNTMAN: "stuntman", A: "dev-a", B: "dev-b"}
HTTP = RouterPort(80, 8080, "http", "http", PortProtocol.HTTP1)
GRPC = RouterPort(9090, 9091, "grpc", None, PortProtocol.H2C)
RAW = RouterPort(7000, 7001, "tcp-raw", None, PortProtocol.TCP)
PORTS = (HTTP, GRPC, RAW)
ROUTES = {"a": A, "b": B}


def _secret_files(
    keys: _pod.SessionKeys, routes: dict[str, str], extra_keys: tuple[str, ...] = ()
) -> dict[str, str]:
    """The router Secret's files, from ktpy's own builders."""
    from datetime import UTC, datetime

    meta = SessionMeta("s1", Role.MESH, "alice@laptop", datetime.now(UTC))
    body = router.router_secret(
        "echo-kt-router",
        "dev",
        meta,
        authorized_keys=[keys.client_line, *extra_keys],
        host_private_key=keys.host_private,
        host_public_key=keys.host_line + "\n",
        config=router.haproxy_config(header="version", ports=PORTS, stuntman_ip=STUNTMAN),
        routes=routes,
    )
    return {k: base64.b64decode(v).decode() for k, v in body["data"].items()}


@dataclass
class Bed:
    pod: _pod.ShadowPod
    workloads: _workloads.Workloads
    binary: Path

    @property
    def addr(self) -> str:
        return self.pod.ns.addr

    def get(self, headers: dict[str, str]) -> str:
        conn = http.client.HTTPConnection(self.addr, HTTP.target_port, timeout=5)
        try:
            conn.request("GET", "/", headers=headers)
            return str(json.loads(conn.getresponse().read())["pod"])
        finally:
            conn.close()

    def runtime(self, command: str) -> str:
        """The runtime API straight on the pod's loopback."""
        sock = _netns.connect_in(self.pod.ns.name, "127.0.0.1", router.ADMIN_PORT)
        with sock:
            sock.sendall(router.runtime_exchange(command))
            return router.parse_answer(_read_to_eof(sock))

    def wait_routing(self) -> None:
        _pod_wait_port(self.pod, HTTP.target_port)


def _read_to_eof(sock: socket.socket | paramiko.Channel) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _pod_wait_port(pod: _pod.ShadowPod, port: int) -> None:
    def listening() -> bool:
        try:
            socket.create_connection((pod.ns.addr, port), timeout=1).close()
        except OSError:
            return False
        return True

    from tests.integration.support import wait_for

    wait_for(listening, 10, f"port {port} of the router")


@pytest.fixture(scope="module")
def bed(built: _image.BuiltImage) -> Iterator[Bed]:
    binary = _workloads.echo_binary()
    keys = _pod.make_keys()
    pod = _pod.start(
        built.rootfs,
        built.config,
        env={"KTPY_ROLE": "router"},
        keys=keys,
        secret=_secret_files(keys, ROUTES),
    )
    workloads = _workloads.Workloads(binary, pod.ns.name)
    tcp = None
    try:
        for address, name in WHO.items():
            workloads.start("http", name, f"{address}:{HTTP.service_port}")
            workloads.start("grpc", name, f"{address}:{GRPC.service_port}")
        tcp = TcpServer(
            _netns.listen_in(pod.ns.name, STUNTMAN, RAW.service_port), lambda b: b"S:" + b
        )
        the_bed = Bed(pod, workloads, binary)
        the_bed.wait_routing()
        yield the_bed
    finally:
        if tcp is not None:
            tcp.close()
        workloads.stop()
        pod.stop()


def test_http1_on_one_keep_alive_connection_each_request_is_routed(bed: Bed) -> None:
    """The header's name and value match in any case; no header or an unknown
    value goes to the stuntman; a developer's connection is never reused for
    another (the answers name their server, and each client address stays
    with one server)."""
    conn = http.client.HTTPConnection(bed.addr, HTTP.target_port, timeout=5)
    sent = [
        ({"version": "a"}, "dev-a"),
        ({"VERSION": "A"}, "dev-a"),
        ({"Version": "b"}, "dev-b"),
        ({}, "stuntman"),
        ({"version": "zz"}, "stuntman"),
        ({"x-version": "a"}, "stuntman"),
        ({"version": "a"}, "dev-a"),
        ({"version": "b"}, "dev-b"),
    ]
    seen: dict[str, set[str]] = {}
    try:
        for headers, expected in sent:
            conn.request("GET", "/", headers=headers)
            answer = conn.getresponse()
            body = json.loads(answer.read())
            assert (headers, body["pod"]) == (headers, expected)
            seen.setdefault(body["client"], set()).add(body["pod"])
        # A chunked upload and a chunked answer on the same connection.
        conn.request("POST", "/", body=iter([b"x" * 100, b"y" * 7]),
                     headers={"version": "b"}, encode_chunked=True)  # fmt: skip
        assert json.loads(conn.getresponse().read())["pod"] == "dev-b"
        conn.request("GET", "/chunked?n=3", headers={"version": "a"})
        answer = conn.getresponse()
        assert answer.getheader("transfer-encoding") == "chunked"
        lines = [json.loads(line) for line in answer.read().splitlines()]
        assert [(line["i"], line["pod"]) for line in lines] == [
            (0, "dev-a"),
            (1, "dev-a"),
            (2, "dev-a"),
        ]
    finally:
        conn.close()
    assert all(len(pods) == 1 for pods in seen.values()), seen


def test_h2c_streams_on_one_connection_are_routed_each(bed: Bed) -> None:
    """A client speaking HTTP/2 with prior knowledge to an HTTP/1.1 port: the
    streams of one connection, in flight together, go each to its own place."""
    with socket.create_connection((bed.addr, HTTP.target_port), timeout=5) as sock:
        bodies = _workloads.h2_get_all(
            sock, [{"version": "a"}, {"version": "B"}, {}, {"version": "a"}]
        )
    assert [json.loads(b)["pod"] for b in bodies] == ["dev-a", "dev-b", "stuntman", "dev-a"]


def test_grpc_with_the_value_as_metadata(bed: Bed) -> None:
    address = f"{bed.addr}:{GRPC.target_port}"
    for headers, expected in [
        ({"version": "a"}, "dev-a"),
        ({"version": "B"}, "dev-b"),
        ({}, "stuntman"),
        ({"version": "zz"}, "stuntman"),
    ]:
        reply = _workloads.grpc_hello(bed.binary, address, headers)
        assert reply["pod"] == expected
        assert reply["version"] == headers.get("version", "")


def _ws(bed: Bed, headers: dict[str, str]) -> tuple[websocket.WebSocket, str]:
    ws = websocket.create_connection(
        f"ws://{bed.addr}:{HTTP.target_port}/ws",
        header=[f"{k}: {v}" for k, v in headers.items()],
        timeout=5,
        http_no_proxy=[bed.addr],
    )
    return ws, str(json.loads(ws.recv())["pod"])


def test_websocket_messages_both_ways(bed: Bed) -> None:
    for headers, expected in [({"version": "a"}, "dev-a"), ({"Version": "b"}, "dev-b"),
                              ({}, "stuntman")]:  # fmt: skip
        ws, pod = _ws(bed, headers)
        try:
            assert pod == expected
            for message in ("one", "two" * 1000):
                ws.send(message)
                assert ws.recv() == message
            ws.send_binary(b"\x00\xff" * 40000)
            assert ws.recv() == b"\x00\xff" * 40000
        finally:
            ws.close()


def test_tcp_port_goes_to_the_stuntman_unrouted(bed: Bed) -> None:
    """Even an HTTP request with the header: a tcp port is not parsed."""
    with socket.create_connection((bed.addr, RAW.target_port), timeout=5) as sock:
        sent = b"GET / HTTP/1.1\r\nversion: a\r\n\r\n"
        got = _pod.exchange(sock, sent + b"..")  # "S:" before each chunk the server read
        assert got.startswith(b"S:")
        assert b"version: a" in got


def _admin_channel(t: paramiko.Transport, command: str) -> str:
    """What ktpy does: a direct-tcpip channel through the router's sshd to the
    admin port on the pod's loopback, one command, read to EOF."""
    chan = t.open_channel("direct-tcpip", ("127.0.0.1", router.ADMIN_PORT), ("127.0.0.1", 0))
    with chan:
        chan.sendall(router.runtime_exchange(command))
        return router.parse_answer(_read_to_eof(chan))


def test_routes_change_at_run_time_without_a_restart(bed: Bed) -> None:
    """add_route/del_route over sshd take effect on the next request; the
    HAProxy process stays the same; an open WebSocket to A keeps working."""
    t = _pod.login(bed.pod)
    ws, pod = _ws(bed, {"version": "a"})
    try:
        assert pod == "dev-a"
        before = router.parse_info(_admin_channel(t, router.SHOW_INFO))
        assert before["Version"].startswith("2.6.")
        haproxy = bed.pod.pid_of("haproxy")
        assert before["Pid"] == _ns_pid(bed.pod, haproxy)

        assert bed.get({"version": "c"}) == "stuntman"
        _admin_channel(t, router.add_route("c", B))
        assert bed.get({"version": "C"}) == "dev-b"
        # Idempotent: again, and to another address, leaves one entry.
        _admin_channel(t, router.add_route("c", B))
        _admin_channel(t, router.add_route("c", A))
        assert bed.get({"version": "c"}) == "dev-a"
        routes = router.parse_map(_admin_channel(t, router.show_map()))
        assert routes == {**ROUTES, "c": A}
        ws.send("still there")
        assert ws.recv() == "still there"

        _admin_channel(t, router.del_route("c"))
        assert bed.get({"version": "c"}) == "stuntman"
        # Deleting what is not there is no error: the route is gone either way.
        assert "not found" in _admin_channel(t, router.del_route("c"))
        assert router.parse_map(bed.runtime(router.show_map())) == ROUTES
        ws.send("and still")
        assert ws.recv() == "and still"

        after = router.parse_info(_admin_channel(t, router.SHOW_INFO))
        assert after["Pid"] == before["Pid"]
        assert bed.pod.pid_of("haproxy") == haproxy
        with pytest.raises(router.RuntimeRefused):
            _admin_channel(t, "add map /nowhere.map x 10.0.0.1")
    finally:
        ws.close()
        t.close()


def test_the_admin_port_is_on_loopback_only(bed: Bed) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((bed.addr, router.ADMIN_PORT), timeout=2).close()


def _ns_pid(pod: _pod.ShadowPod, host_pid: int) -> str:
    for p in pod.processes():
        if p.pid == host_pid:
            return p.status["NSpid"].split()[-1]
    raise LookupError(host_pid)


def test_session_keys_follow_the_secret_without_a_restart(bed: Bed) -> None:
    """A developer joining adds a key line to the Secret; one leaving removes
    theirs. sshd reads the mounted file at each login."""
    first = bed.pod.keys
    second = _pod.make_keys()
    haproxy = bed.pod.pid_of("haproxy")
    with pytest.raises(AuthenticationException):
        _pod.login(bed.pod, key=second.client)
    bed.pod.update_secret(_secret_files(first, ROUTES, extra_keys=(second.client_line,)))
    _pod.login(bed.pod, key=second.client).close()
    _pod.login(bed.pod, key=first.client).close()
    # The first developer leaves: only the second key is left.
    files = _secret_files(first, ROUTES)
    files["authorized_keys"] = second.client_line + "\n"
    bed.pod.update_secret(files)
    with pytest.raises(AuthenticationException):
        _pod.login(bed.pod, key=first.client)
    t = _pod.login(bed.pod, key=second.client)
    try:
        assert router.parse_map(_admin_channel(t, router.show_map())) == ROUTES
    finally:
        t.close()
    assert bed.pod.pid_of("haproxy") == haproxy
    bed.pod.update_secret(_secret_files(first, ROUTES))


def test_a_restarted_router_serves_the_secrets_routes_at_once(bed: Bed) -> None:
    """The Secret's versions.map is the source of truth: a route added only at
    run time is gone after a restart, the map's routes work from the first
    request."""
    bed.runtime(router.add_route("gone", A))
    bed.pod.update_secret(_secret_files(bed.pod.keys, {**ROUTES, "d": B}))
    bed.pod.restart(wait=False)
    bed.wait_routing()
    assert bed.get({"version": "d"}) == "dev-b"
    assert bed.get({"version": "a"}) == "dev-a"
    assert bed.get({"version": "gone"}) == "stuntman"
    assert router.parse_map(bed.runtime(router.show_map())) == {**ROUTES, "d": B}
    bed.pod.update_secret(_secret_files(bed.pod.keys, ROUTES))
    bed.pod.restart()
    bed.wait_routing()


# --- the entrypoint in the router role ---------------------------------------------


def _router(start_pod: StartPod, **kw: object) -> _pod.ShadowPod:
    keys = _pod.make_keys()
    return start_pod(
        env={"KTPY_ROLE": "router"}, keys=keys, secret=_secret_files(keys, ROUTES), **kw
    )


def test_router_runs_sshd_and_haproxy_unprivileged(start_pod: StartPod) -> None:
    pod = _router(start_pod)
    _pod_wait_port(pod, HTTP.target_port)
    names = sorted({p.name for p in pod.processes()})
    assert {"haproxy", "sshd"} <= set(names)
    assert "dnsmasq" not in names
    for p in pod.processes():
        assert (set(p.uids), set(p.gids)) == ({10001}, {10001}), p
        assert p.status["CapEff"] == "0000000000000000", p
    assert "2 route(s)" in pod.log()


def test_exits_nonzero_when_haproxy_dies(start_pod: StartPod) -> None:
    pod = _router(start_pod)
    os.kill(pod.pid_of("haproxy"), signal.SIGKILL)
    assert pod.wait_exit() == 128 + signal.SIGKILL, pod.log()
    assert "haproxy exited with status 137" in pod.log()
    assert pod.processes() == []


def test_sigterm_stops_sshd_and_haproxy(start_pod: StartPod) -> None:
    pod = _router(start_pod)
    _pod_wait_port(pod, HTTP.target_port)
    os.kill(pod.pid_of("init"), signal.SIGTERM)
    assert pod.wait_exit(timeout=10) == 0, pod.log()
    assert pod.processes() == []


def test_refuses_to_start_without_its_config(start_pod: StartPod) -> None:
    keys = _pod.make_keys()
    files = _secret_files(keys, ROUTES)
    del files[router.MAP_FILE]
    pod = start_pod(env={"KTPY_ROLE": "router"}, keys=keys, secret=files, wait=False)
    assert pod.wait_exit() == 1
    assert "cannot read /etc/ktpy/secret/versions.map" in pod.log()
