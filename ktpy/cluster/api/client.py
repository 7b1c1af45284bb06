"""``KubernetesApi``: the ``ClusterApi`` over the official client's configuration
and HTTP pool (plain JSON bodies, typed errors, the server's clock)."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import certifi
import websocket
import yaml

from ktpy.cluster.api.errors import (
    NotFound,
    ServerError,
    error_from_status,
    refused_access,
    unreachable,
)
from ktpy.cluster.api.kinds import Kind, PatchType
from ktpy.cluster.api.kubeconfig import PluginUser, load_kubeconfig
from ktpy.cluster.api.protocol import ListResult, WatchEvent, WatchEventType
from ktpy.cluster.bodies import FIELD_MANAGER, JsonObject
from ktpy.config import unreadable_kubeconfig
from ktpy.errors import ClusterUnreachable, Forbidden
from ktpy.logs import get_logger

WATCH_READ_MARGIN_SECONDS = 10
DEFAULT_TIMEOUT_SECONDS = 15.0
CONNECT_TIMEOUT = 5.0
MANAGER = ("fieldManager", FIELD_MANAGER)  # on every write: managedFields name ktpy

log = get_logger("ktpy.api")


def rbac_resource(kind: Kind, subresource: str | None = None) -> str:
    """How RBAC names what a request touches: ``group/plural[/subresource]``, the core
    group written as no group (``services``, ``apps/deployments``, ``pods/portforward``)."""
    group = kind.api_version.rpartition("/")[0]
    plural = f"{kind.plural}/{subresource}" if subresource else kind.plural
    return f"{group}/{plural}" if group else plural


def log_call(verb: str, resource: str, namespace: str | None, status: int) -> None:
    """One debug line per API request, as RBAC sees it (the record that docs/rbac's
    Roles are checked against)."""
    log.debug("api call", verb=verb, resource=resource, namespace=namespace or "", status=status)


def resource_path(
    kind: Kind,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a kind, optionally one object and a subresource of it.

    ``namespace`` None (or a cluster-scoped kind) leaves the namespace out,
    which for a list of a namespaced kind means "all namespaces".
    """
    group_version = kind.api_version
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    parts = [base]
    if kind.namespaced and namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(kind.plural)
    if name is not None:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


def with_kind(kind: Kind, body: JsonObject) -> JsonObject:
    """List and watch items may lack ``kind``/``apiVersion``; ktpy's views rely on them."""
    body.setdefault("kind", kind.value)
    body.setdefault("apiVersion", kind.api_version)
    return body


def parse_watch_line(line: bytes, *, kind: Kind, namespace: str | None) -> WatchEvent:
    """One line of a watch stream; an ERROR event becomes the matching exception."""
    try:
        data = json.loads(line)
        event_type = str(data["type"])
        obj = data["object"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError(f"unreadable watch event: {line[:200]!r}") from exc
    if event_type == "ERROR":
        code = int(obj.get("code") or 500)
        raise error_from_status(code, obj, verb="watch", kind=kind, namespace=namespace)
    try:
        typed = WatchEventType(event_type)
    except ValueError as exc:
        raise ServerError(f"unknown watch event type {event_type!r}") from exc
    return WatchEvent(typed, with_kind(kind, obj))


def status_body(raw: bytes | str) -> JsonObject | None:
    """The Status object of an error answer, if its body is one (JSON object)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class KubernetesApi:
    """``ClusterApi`` over the official client's configuration and HTTP pool.

    The kubeconfig is read by ``kubernetes.config`` (exec credential plugins,
    OIDC, ``proxy-url``, token refresh during a long session all come with
    it); requests are plain JSON, not the generated models, so every field of
    an object survives a read-modify-write.
    """

    def __init__(self, api_client: Any, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._client = api_client
        self._timeout = timeout

    @classmethod
    def from_kubeconfig(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        context: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        plugins_as: PluginUser | None = None,
    ) -> KubernetesApi:
        """plugins_as: run exec credential plugins as this user (ktpy under sudo)."""
        from kubernetes import client as kube_client  # slow imports: only when used
        from kubernetes import config as kube_config

        configuration = kube_client.Configuration()
        try:
            load_kubeconfig(paths, context, configuration, plugins_as)
            # One retry, not urllib3's default three: an unreachable API server must be
            # reported in seconds, and ktpy's own loops retry where that makes sense.
            configuration.retries = 1
            client = kube_client.ApiClient(configuration)
        except (OSError, UnicodeError, yaml.YAMLError) as exc:
            where = os.pathsep.join(str(p) for p in paths)
            raise unreadable_kubeconfig(getattr(exc, "filename", None) or where, exc) from exc
        except kube_config.ConfigException as exc:
            plugin = "exec credential plugin" in str(exc)
            raise ClusterUnreachable(
                f"cannot use the kubeconfig: {exc}",
                hint="'kubectl get ns' with the same kubeconfig runs the same plugin and shows "
                "what it says (a login to renew?)."
                if plugin
                else "Check --kubeconfig/KUBECONFIG and --context; 'kubectl config view' helps.",
            ) from exc
        return cls(client, timeout=timeout)

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    # --- HTTP ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        """Send a request; the raw response (streaming, not yet read)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            method, url, headers, body, _ = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            return self._client.call_api(
                method,
                url,
                header_params=headers,
                body=body,
                # (connect, read): a dead address fails fast, a slow answer may take longer
                _request_timeout=timeout
                if timeout is not None
                else (CONNECT_TIMEOUT, self._timeout),
            )
        except ConfigException as exc:
            # Credentials refreshed during a session: an exec plugin that failed now.
            raise ClusterUnreachable(f"cannot use the kubeconfig: {exc}") from exc
        except (HTTPError, OSError, ApiException) as exc:
            raise unreachable(self.host, exc) from exc

    def _call(
        self,
        method: str,
        path: str,
        *,
        verb: str,
        kind: Kind,
        namespace: str | None,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[JsonObject, str | None]:
        """A request with a JSON answer: (body, Date header); errors raised as typed."""
        response = self._send(method, path, query=query, body=body, content_type=content_type)
        raw = self._read(response)
        date = response.headers.get("Date")
        log_call(verb, rbac_resource(kind), namespace if kind.namespaced else None, response.status)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if response.status >= 400:
            raise error_from_status(
                response.status,
                data if isinstance(data, dict) else None,
                verb=verb,
                kind=kind,
                namespace=namespace,
            )
        if not isinstance(data, dict):
            raise ServerError(f"unexpected answer to {method} {path}: {raw[:200]!r}")
        return data, date

    # --- ClusterApi -------------------------------------------------------------------------

    def _read(self, response: Any) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            return bytes(response.read())
        except (HTTPError, OSError) as exc:  # the connection broke or stalled mid-answer
            raise unreachable(self.host, exc) from exc

    def server_time(self) -> datetime:
        response = self._send("GET", "/version")
        raw = self._read(response)
        if response.status >= 400:
            raise error_from_status(
                response.status,
                status_body(raw),
                verb="get",
                kind=Kind.NAMESPACE,
                namespace=None,
            )
        date = response.headers.get("Date")
        if not date:
            raise ServerError("the API server sent no Date header")
        moment = parsedate_to_datetime(date)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def get(self, kind: Kind, namespace: str, name: str) -> JsonObject:
        data, _ = self._call(
            "GET", resource_path(kind, namespace, name), verb="get", kind=kind, namespace=namespace
        )
        return with_kind(kind, data)

    def list_objects(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> ListResult:
        query = [("labelSelector", label_selector)] if label_selector else []
        if field_selector:
            query.append(("fieldSelector", field_selector))
        data, _ = self._call(
            "GET",
            resource_path(kind, namespace),
            verb="list",
            kind=kind,
            namespace=namespace,
            query=query,
        )
        items = tuple(with_kind(kind, item) for item in data.get("items") or [])
        version = str((data.get("metadata") or {}).get("resourceVersion", ""))
        return ListResult(items, version)

    def create(
        self, kind: Kind, namespace: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> JsonObject:
        data, _ = self._call(
            "POST",
            resource_path(kind, namespace),
            verb="create",
            kind=kind,
            namespace=namespace,
            body=dict(body),
            query=[MANAGER, ("dryRun", "All")] if dry_run else [MANAGER],
        )
        return with_kind(kind, data)

    def replace(self, kind: Kind, namespace: str, name: str, body: Mapping[str, Any]) -> JsonObject:
        data, _ = self._call(
            "PUT",
            resource_path(kind, namespace, name),
            verb="update",
            kind=kind,
            namespace=namespace,
            body=dict(body),
            query=[MANAGER],
        )
        return with_kind(kind, data)

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        patch_type: PatchType = PatchType.MERGE,
    ) -> JsonObject:
        body: Any = dict(patch) if isinstance(patch, Mapping) else [dict(op) for op in patch]
        data, _ = self._call(
            "PATCH",
            resource_path(kind, namespace, name),
            verb="patch",
            kind=kind,
            namespace=namespace,
            body=body,
            content_type=patch_type.value,
            query=[MANAGER],
        )
        return with_kind(kind, data)

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        options: JsonObject = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        try:
            self._call(
                "DELETE",
                resource_path(kind, namespace, name),
                verb="delete",
                kind=kind,
                namespace=namespace,
                body=options,
            )
        except NotFound:
            return False
        return True

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        timeout_seconds: int = 60,
    ) -> Iterator[WatchEvent]:
        from urllib3.exceptions import HTTPError

        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if resource_version:
            query.append(("resourceVersion", resource_version))
        response = self._send(
            "GET",
            resource_path(kind, namespace),
            query=query,
            # Connect timeout as usual; reads may be quiet until the server's own timeout.
            timeout=(self._timeout, timeout_seconds + WATCH_READ_MARGIN_SECONDS),
        )
        raw = response.response
        log_call(
            "watch", rbac_resource(kind), namespace if kind.namespaced else None, response.status
        )
        try:
            if response.status >= 400:
                raise error_from_status(
                    response.status,
                    status_body(raw.read()),
                    verb="watch",
                    kind=kind,
                    namespace=namespace,
                )
            pending = b""
            try:
                for chunk in raw.stream(64 * 1024, decode_content=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield parse_watch_line(line, kind=kind, namespace=namespace)
            except HTTPError:
                # The server ended the watch (timeout or a dropped connection): the caller
                # re-watches from the last resourceVersion it saw.
                return
        finally:
            raw.release_conn()

    def namespaces(self) -> list[str]:
        listed = self.list_objects(Kind.NAMESPACE, None)
        return sorted(str(item["metadata"]["name"]) for item in listed.items)

    def open_websocket(self, path: str, subprotocols: Sequence[str]) -> websocket.WebSocket:
        configuration = self._client.configuration
        headers = {"sec-websocket-protocol": ",".join(subprotocols)}
        token = configuration.auth_settings().get("BearerToken")
        if token and token.get("value"):
            headers["authorization"] = token["value"]
        url = configuration.host + path
        if url.startswith("https://"):
            url = "wss://" + url[len("https://") :]
        elif url.startswith("http://"):
            url = "ws://" + url[len("http://") :]
        # RBAC checks a WebSocket upgrade as `get`, then `create`, on the subresource.
        namespace, resource = _websocket_resource(path)
        try:
            socket_ = _connect_websocket(configuration, url, headers)
        except websocket.WebSocketBadStatusException as exc:
            log_call("create", resource, namespace, exc.status_code)
            body = status_body(exc.resp_body or b"")
            if exc.status_code == 403:
                message = str((body or {}).get("message") or "")
                verb, refused = refused_access(message, "create", resource)
                detail = "" if (verb, refused) != ("create", resource) else message
                raise Forbidden(verb, refused, namespace, detail) from exc
            raise error_from_status(
                exc.status_code,
                body,
                verb="create",
                kind=Kind.POD,
                namespace=namespace,
            ) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise ClusterUnreachable(f"cannot open {path} on {self.host}: {exc}") from exc
        log_call("get", resource, namespace, 101)
        log_call("create", resource, namespace, 101)
        return socket_


def _websocket_resource(path: str) -> tuple[str | None, str]:
    """(namespace, RBAC resource) of a subresource path such as
    ``/api/v1/namespaces/NS/pods/NAME/portforward?ports=2222``."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"]:
        return parts[3], f"{parts[4]}/{parts[6]}"
    return None, path


def _connect_websocket(
    configuration: Any, url: str, headers: dict[str, str]
) -> websocket.WebSocket:
    """kubernetes' ``create_websocket``, with a timeout on every socket operation of
    the handshake: without one, a connect over a path that drops packets waits for
    the kernel's SYN retries (about two minutes), and a tunnel reconnecting after a
    laptop's network came back would wait that long too."""
    from kubernetes.stream.ws_client import websocket_proxycare

    ssl_options: dict[str, Any] = {"cert_reqs": ssl.CERT_NONE}
    if url.startswith("wss://") and configuration.verify_ssl:
        ssl_options = {
            "cert_reqs": ssl.CERT_REQUIRED,
            "ca_certs": configuration.ssl_ca_cert or certifi.where(),
        }
        if configuration.assert_hostname is not None:
            ssl_options["check_hostname"] = configuration.assert_hostname
    if configuration.cert_file:
        ssl_options["certfile"] = configuration.cert_file
    if configuration.key_file:
        ssl_options["keyfile"] = configuration.key_file
    if configuration.tls_server_name:
        ssl_options["server_hostname"] = configuration.tls_server_name
    options: dict[str, Any] = {
        "header": [f"{name}: {value}" for name, value in headers.items()],
        "timeout": CONNECT_TIMEOUT,
    }
    if configuration.proxy or configuration.proxy_headers:
        options = websocket_proxycare(options, configuration, url, headers)  # type: ignore[no-untyped-call]
    socket_ = websocket.WebSocket(sslopt=ssl_options, skip_utf8_validation=False)
    socket_.connect(url, **options)  # type: ignore[no-untyped-call]
    return socket_
