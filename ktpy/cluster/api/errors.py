"""API answers a caller branches on (``ApiError``), typed from the HTTP status.

What ends a command instead (RBAC refusal, Pod Security rejection, an
unreachable or unauthenticated cluster, a request that timed out) is a
``KtpyError`` with its exit code. An ``ApiError`` no caller handled becomes the
user's error at the command's edge (``for_user``): 5xx and 429 (after the
callers' own retries) have their exit codes too, never "a bug in ktpy".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ktpy.cluster.api.kinds import Kind
from ktpy.errors import (
    ApiServerError,
    ApiThrottled,
    ApiTimeout,
    ClusterUnreachable,
    Forbidden,
    KtpyError,
    PodSecurityRejected,
)


class ApiError(Exception):
    """An API answer a caller is expected to handle."""

    status = 0

    def __init__(self, message: str, *, reason: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        if status is not None:
            self.status = status


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """The object changed since it was read (resourceVersion or uid precondition failed)."""

    status = 409


class AlreadyExists(ApiError):
    status = 409


class Gone(ApiError):
    """A watch's resourceVersion is too old: list again and watch from the new version."""

    status = 410


class Invalid(ApiError):
    status = 422


class ServerError(ApiError):
    """5xx or 429: worth a retry with backoff."""

    status = 500


# The authorizer's refusal: 'User "dev" cannot list resource "pods" in API group ""'.
_REFUSAL = re.compile(r'cannot (\S+) resource "([^"]+)"(?: in API group "([^"]*)")?')


def refused_access(message: str, verb: str, resource: str) -> tuple[str, str]:
    """The verb and resource RBAC refused, as the API server names them (a websocket
    port-forward is refused ``create`` on ``pods/portforward``, not ``get`` on pods);
    the caller's own guess when the message does not say."""
    match = _REFUSAL.search(message)
    if match is None:
        return verb, resource
    refused_verb, refused_resource, group = match.groups()
    return refused_verb, f"{group}/{refused_resource}" if group else refused_resource


def error_from_status(
    status: int,
    body: Mapping[str, Any] | None,
    *,
    verb: str,
    kind: Kind,
    namespace: str | None,
) -> Exception:
    """The exception for an error answer (``body`` is the API's ``Status`` object, if any)."""
    status_body = body or {}
    message = str(status_body.get("message") or f"HTTP {status}")
    reason = str(status_body.get("reason") or "")
    if status == 401:
        return ClusterUnreachable(
            f"the API server rejected the credentials ({message})",
            hint="Log in again (kubectl uses the same kubeconfig), then retry.",
        )
    if status == 403:
        if "PodSecurity" in message:
            return PodSecurityRejected(f"pod rejected by Pod Security admission: {message}")
        group = kind.api_version.rpartition("/")[0]
        guess = f"{group}/{kind.plural}" if group else kind.plural
        refused_verb, resource = refused_access(message, verb, guess)
        # The server's message only repeats what the line names when it could be read.
        detail = "" if _REFUSAL.search(message) else message
        return Forbidden(refused_verb, resource, namespace, detail)
    if status == 404:
        return NotFound(message, reason=reason)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(message, reason=reason)
        return Conflict(message, reason=reason)
    if status == 410:
        return Gone(message, reason=reason)
    if status == 422:
        return Invalid(message, reason=reason)
    if status == 429 or status >= 500:
        return ServerError(message, reason=reason, status=status)
    return KtpyError(f"unexpected answer from the API server: HTTP {status}: {message}")


def for_user(exc: ApiError) -> KtpyError:
    """The one-line error (and exit code) of an API answer that ended a command."""
    if isinstance(exc, ServerError) and exc.status == 429:
        return ApiThrottled(f"the API server turned the request away (HTTP 429): {exc.message}")
    if isinstance(exc, ServerError) and exc.status == 504:
        return ApiTimeout(f"the API server timed out (HTTP 504): {exc.message}")
    if isinstance(exc, ServerError):
        return ApiServerError(f"the API server failed (HTTP {exc.status}): {exc.message}")
    return KtpyError(
        f"unexpected answer from the API server (HTTP {exc.status}): {exc.message}",
        hint="Something changed the objects at the same time; run the command again.",
    )


def unreachable(host: str, exc: BaseException) -> KtpyError:
    """A request that got no answer: timed out (ApiTimeout) or could not be sent or read
    (ClusterUnreachable). ``exc`` is what urllib3 or the socket raised."""
    from urllib3.exceptions import NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    def timed_out(error: object) -> bool:
        # urllib3 makes a refused connection a kind of ConnectTimeoutError: it is not one.
        return isinstance(error, (TimeoutError, Urllib3Timeout)) and not isinstance(
            error, NewConnectionError
        )

    reason = getattr(exc, "reason", None) or exc
    # urllib3 wraps the cause with its connection object: say only the sentence.
    args = getattr(reason, "args", ())
    said = args[-1] if args and isinstance(args[-1], str) else str(reason)
    if timed_out(exc) or timed_out(reason):
        return ApiTimeout(f"the API server at {host} did not answer in time: {said}")
    return ClusterUnreachable(f"cannot reach the API server at {host}: {said}")
