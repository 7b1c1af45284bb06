"""KubernetesApi against a stand-in API server on loopback: real kubeconfig loading,
real HTTP, canned answers. No cluster; the end-to-end tier tests it against one."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from click.testing import CliRunner

from ktpy.cli import cli
from ktpy.cluster.api import (
    AlreadyExists,
    Conflict,
    Gone,
    Kind,
    KubernetesApi,
    NotFound,
    PatchType,
    ServerError,
    WatchEventType,
    for_user,
    parse_watch_line,
    resource_path,
)
from ktpy.errors import (
    ApiServerError,
    ApiThrottled,
    ApiTimeout,
    ClusterUnreachable,
    Forbidden,
    KtpyError,
    PodSecurityRejected,
)

pytestmark = pytest.mark.timeout(30)

Answer = tuple[int, Any] | Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    default: Answer | None = None  # for every request not in answers
    port: int = 0


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            return "Fri, 27 Nov 2026 12:34:56 GMT"

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            state.seen.append(
                Seen(
                    self.command,
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                )
            )
            answer = state.answers.get((self.command, parts.path), state.default)
            if answer is None:
                answer = (404, status_body(404, "NotFound", f"{parts.path} not found"))
            if callable(answer):
                answer(self)
                return
            code, body = answer
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815 (http.server names)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""
apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster: {{server: "http://127.0.0.1:{port}"}}
users:
- name: dev
  user: {{token: t0ken}}
contexts:
- name: bed-dev
  context: {{cluster: bed, user: dev, namespace: dev}}
current-context: bed-dev
"""
    )
    return path


@pytest.fixture
def api(stand_in: StandIn, tmp_path: Path) -> KubernetesApi:
    return KubernetesApi.from_kubeconfig([kubeconfig(tmp_path, stand_in.port)], timeout=5)


POD = {"metadata": {"name": "p", "namespace": "dev", "resourceVersion": "5", "uid": "u1"}}


class TestPaths:
    @pytest.mark.parametrize(
        ("args", "path"),
        [
            ((Kind.POD, "dev", "p"), "/api/v1/namespaces/dev/pods/p"),
            ((Kind.POD, None), "/api/v1/pods"),
            ((Kind.DEPLOYMENT, "dev"), "/apis/apps/v1/namespaces/dev/deployments"),
            (
                (Kind.ENDPOINT_SLICE, "dev"),
                "/apis/discovery.k8s.io/v1/namespaces/dev/endpointslices",
            ),
            ((Kind.SERVICE_CIDR, "ignored"), "/apis/networking.k8s.io/v1/servicecidrs"),
            ((Kind.NAMESPACE, None, "dev"), "/api/v1/namespaces/dev"),
            ((Kind.POD, "dev", "p", "portforward"), "/api/v1/namespaces/dev/pods/p/portforward"),
        ],
    )
    def test_resource_path(self, args: tuple[Any, ...], path: str) -> None:
        assert resource_path(*args) == path


class TestRequests:
    def test_get_sends_the_token_and_fills_in_kind(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        stand_in.answers["GET", "/api/v1/namespaces/dev/pods/p"] = (200, POD)
        pod = api.get(Kind.POD, "dev", "p")
        assert pod["kind"] == "Pod"
        assert pod["metadata"]["uid"] == "u1"
        assert stand_in.seen[0].headers["authorization"] == "Bearer t0ken"

    def test_list_across_namespaces_with_selectors(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        stand_in.answers["GET", "/apis/apps/v1/deployments"] = (
            200,
            {"metadata": {"resourceVersion": "77"}, "items": [POD]},
        )
        result = api.list_objects(
            Kind.DEPLOYMENT, None, label_selector="a=b", field_selector="metadata.name=p"
        )
        assert result.resource_version == "77"
        assert result.items[0]["kind"] == "Deployment"
        assert result.items[0]["apiVersion"] == "apps/v1"
        assert stand_in.seen[0].query == {
            "labelSelector": "a=b",
            "fieldSelector": "metadata.name=p",
        }

    def test_create_sends_the_body(self, api: KubernetesApi, stand_in: StandIn) -> None:
        stand_in.answers["POST", "/api/v1/namespaces/dev/secrets"] = (201, POD)
        api.create(Kind.SECRET, "dev", {"metadata": {"name": "s"}, "data": {"k": "dg=="}})
        assert stand_in.seen[0].body == {"metadata": {"name": "s"}, "data": {"k": "dg=="}}

    @pytest.mark.parametrize(
        ("code", "reason", "message", "error"),
        [
            (409, "AlreadyExists", 'pods "p" already exists', AlreadyExists),
            (
                403,
                "Forbidden",
                'pods "p" is forbidden: violates PodSecurity "restricted:latest"',
                PodSecurityRejected,
            ),
            (403, "Forbidden", 'User "dev" cannot create resource "pods"', Forbidden),
            (500, "InternalError", "etcd down", ServerError),
        ],
    )
    def test_create_errors_are_typed(
        self,
        api: KubernetesApi,
        stand_in: StandIn,
        code: int,
        reason: str,
        message: str,
        error: type[Exception],
    ) -> None:
        stand_in.answers["POST", "/api/v1/namespaces/dev/pods"] = (
            code,
            status_body(code, reason, message),
        )
        with pytest.raises(error):
            api.create(Kind.POD, "dev", POD)

    def test_replace_conflict(self, api: KubernetesApi, stand_in: StandIn) -> None:
        stand_in.answers["PUT", "/api/v1/namespaces/dev/services/s"] = (
            409,
            status_body(409, "Conflict", "the object has been modified"),
        )
        with pytest.raises(Conflict, match="modified"):
            api.replace(Kind.SERVICE, "dev", "s", POD)
        assert stand_in.seen[0].body["metadata"]["resourceVersion"] == "5"

    @pytest.mark.parametrize(
        ("patch_type", "patch"),
        [
            (PatchType.MERGE, {"metadata": {"annotations": {"a": "b"}}}),
            (PatchType.JSON, [{"op": "test", "path": "/spec/replicas", "value": 0}]),
            (PatchType.STRATEGIC, {"spec": {"replicas": 1}}),
        ],
    )
    def test_patch_content_types(
        self, api: KubernetesApi, stand_in: StandIn, patch_type: PatchType, patch: Any
    ) -> None:
        stand_in.answers["PATCH", "/apis/apps/v1/namespaces/dev/deployments/web"] = (200, POD)
        api.patch(Kind.DEPLOYMENT, "dev", "web", patch, patch_type=patch_type)
        assert stand_in.seen[0].headers["content-type"] == patch_type.value
        assert stand_in.seen[0].body == patch

    def test_delete_with_uid_precondition_and_already_gone(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        stand_in.answers["DELETE", "/api/v1/namespaces/dev/pods/p"] = (200, POD)
        assert api.delete(Kind.POD, "dev", "p", uid="u1", grace_period_seconds=0) is True
        body = stand_in.seen[0].body
        assert body["preconditions"] == {"uid": "u1"}
        assert body["gracePeriodSeconds"] == 0
        assert api.delete(Kind.POD, "dev", "other") is False

    def test_get_missing_is_not_found(self, api: KubernetesApi) -> None:
        with pytest.raises(NotFound):
            api.get(Kind.SERVICE, "dev", "nope")

    def test_server_time_comes_from_the_date_header(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        stand_in.answers["GET", "/version"] = (200, {"gitVersion": "v1.34.4"})
        assert api.server_time() == datetime(2026, 11, 27, 12, 34, 56, tzinfo=UTC)

    def test_namespaces(self, api: KubernetesApi, stand_in: StandIn) -> None:
        stand_in.answers["GET", "/api/v1/namespaces"] = (
            200,
            {"metadata": {}, "items": [{"metadata": {"name": "b"}}, {"metadata": {"name": "a"}}]},
        )
        assert api.namespaces() == ["a", "b"]


def stream_lines(lines: list[bytes]) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for line in lines:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")

    return answer


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class TestWatch:
    def test_events_stream_in_order(self, api: KubernetesApi, stand_in: StandIn) -> None:
        first = event("ADDED", POD)
        split = len(first) // 2
        stand_in.answers["GET", "/api/v1/namespaces/dev/pods"] = stream_lines(
            [
                first[:split],
                first[split:] + event("MODIFIED", POD),
                event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}),
                event("DELETED", POD),
            ]
        )
        events = list(
            api.watch(
                Kind.POD, "dev", label_selector="a=b", resource_version="4", timeout_seconds=5
            )
        )
        assert [e.type for e in events] == [
            WatchEventType.ADDED,
            WatchEventType.MODIFIED,
            WatchEventType.BOOKMARK,
            WatchEventType.DELETED,
        ]
        assert events[0].object["kind"] == "Pod"
        query = stand_in.seen[0].query
        assert query["watch"] == "true"
        assert query["resourceVersion"] == "4"
        assert query["timeoutSeconds"] == "5"
        assert query["labelSelector"] == "a=b"

    def test_expired_version_is_gone(self, api: KubernetesApi, stand_in: StandIn) -> None:
        stand_in.answers["GET", "/api/v1/namespaces/dev/pods"] = stream_lines(
            [event("ERROR", status_body(410, "Expired", "too old resource version: 4 (90)"))]
        )
        with pytest.raises(Gone, match="too old"):
            list(api.watch(Kind.POD, "dev", resource_version="4"))

    def test_refused_watch(self, api: KubernetesApi, stand_in: StandIn) -> None:
        stand_in.answers["GET", "/api/v1/namespaces/dev/pods"] = (
            403,
            status_body(403, "Forbidden", "cannot watch pods"),
        )
        with pytest.raises(Forbidden, match="not allowed to watch pods"):
            list(api.watch(Kind.POD, "dev"))

    def test_garbage_line(self) -> None:
        with pytest.raises(ServerError, match="unreadable"):
            parse_watch_line(b"{not json", kind=Kind.POD, namespace="dev")


class TestUnreachable:
    def test_closed_port(self, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        api = KubernetesApi.from_kubeconfig([kubeconfig(tmp_path, port)], timeout=2)
        with pytest.raises(ClusterUnreachable, match="cannot reach the API server"):
            api.get(Kind.POD, "dev", "p")

    def test_an_answer_cut_short_is_unreachable_not_a_bug(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        def cut(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"metadata": {')
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)  # the API server went away

        stand_in.answers["GET", "/api/v1/namespaces/dev/pods/p"] = cut
        with pytest.raises(ClusterUnreachable, match="cannot reach the API server") as caught:
            api.get(Kind.POD, "dev", "p")
        assert caught.value.exit_code == 10

    def test_bad_kubeconfig(self, tmp_path: Path) -> None:
        with pytest.raises(ClusterUnreachable, match="kubeconfig") as caught:
            KubernetesApi.from_kubeconfig([tmp_path / "missing"], context="nope")
        assert "--context" in caught.value.hint


def websocket_upgrade(handler: BaseHTTPRequestHandler) -> None:
    key = handler.headers["Sec-WebSocket-Key"]
    accept = base64.b64encode(
        hashlib.sha1(  # noqa: S324 (RFC 6455 says SHA-1)
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
        ).digest()
    ).decode()
    handler.send_response(101)
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    handler.end_headers()
    handler.wfile.flush()


class TestWebSocket:
    def test_upgrade_carries_token_and_subprotocols(
        self, api: KubernetesApi, stand_in: StandIn
    ) -> None:
        path = "/api/v1/namespaces/dev/pods/p/portforward"
        stand_in.answers["GET", path] = websocket_upgrade
        ws = api.open_websocket(path + "?ports=2222", ["v4.channel.k8s.io"])
        try:
            assert ws.connected
            seen = stand_in.seen[0]
            assert seen.query == {"ports": "2222"}
            assert seen.headers["authorization"] == "Bearer t0ken"
            assert seen.headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
        finally:
            ws.close()

    def test_refused_upgrade_is_typed(self, api: KubernetesApi, stand_in: StandIn) -> None:
        path = "/api/v1/namespaces/dev/pods/p/portforward"
        stand_in.answers["GET", path] = (403, status_body(403, "Forbidden", "no portforward"))
        with pytest.raises(Forbidden):
            api.open_websocket(path, ["v4.channel.k8s.io"])


# --- each failure class a user can meet, and its exit code ---------------------------------


class TestFailuresForUsers:
    """The client's translation (and ``for_user`` at the command's edge) gives every
    failure of the API its own exit code; none is "a bug in ktpy" (70)."""

    @pytest.mark.parametrize(
        ("status", "reason", "error", "code"),
        [
            (500, "InternalError", ApiServerError, 18),
            (503, "ServiceUnavailable", ApiServerError, 18),
            (429, "TooManyRequests", ApiThrottled, 19),
            (504, "Timeout", ApiTimeout, 17),
        ],
    )
    def test_5xx_and_429(
        self,
        api: KubernetesApi,
        stand_in: StandIn,
        status: int,
        reason: str,
        error: type[KtpyError],
        code: int,
    ) -> None:
        stand_in.default = (status, status_body(status, reason, "etcdserver: leader changed"))
        with pytest.raises(ServerError) as caught:  # callers may retry on it
            api.get(Kind.POD, "dev", "p")
        assert caught.value.status == status
        user = for_user(caught.value)
        assert type(user) is error
        assert user.exit_code == code
        assert "etcdserver: leader changed" in user.format_message()
        assert user.hint

    def test_a_request_that_gets_no_answer_in_time(self, stand_in: StandIn, tmp_path: Path) -> None:
        def silent(handler: BaseHTTPRequestHandler) -> None:
            time.sleep(1.5)

        stand_in.default = silent
        api = KubernetesApi.from_kubeconfig([kubeconfig(tmp_path, stand_in.port)], timeout=0.3)
        with pytest.raises(ApiTimeout, match="did not answer in time") as caught:
            api.get(Kind.POD, "dev", "p")
        assert caught.value.exit_code == 17

    def test_other_unhandled_answers_are_plain_errors(self) -> None:
        user = for_user(Conflict("the object has been modified", reason="Conflict"))
        assert type(user) is KtpyError
        assert user.exit_code == 1
        assert "HTTP 409" in user.format_message()

    @pytest.mark.parametrize(("status", "code"), [(500, 18), (429, 19), (401, 10), (403, 11)])
    def test_a_command_ends_with_the_code_of_the_api_failure(
        self, stand_in: StandIn, tmp_path: Path, status: int, code: int
    ) -> None:
        stand_in.default = (status, status_body(status, "X", "no"))
        config = tmp_path / "config.yaml"
        config.write_text("")
        result = CliRunner().invoke(
            cli,
            ["--kubeconfig", str(kubeconfig(tmp_path, stand_in.port)), "status"],
            env={"KTPY_CONFIG": str(config)},
        )
        assert result.exit_code == code, result.output
        assert "a bug in ktpy" not in result.output
