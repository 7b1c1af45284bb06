"""Command-line values checked at the edge, before anything touches the cluster or host.

Each value has a pure parser (raising ValueError with a message for people)
and a ``click.ParamType`` that turns that ValueError into Click's usage error.
The parsed results are frozen objects, so the layers below never see raw text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from ktpy.durations import parse_duration

# The address and network types every layer passes around, named once.
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Kubernetes' IANA_SVC_NAME: what a named Service or container port may be called.
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")
_PORT_NAME_MAX = 15
VERSION_MARK_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
_VERSION_MARK_VALUE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DEFAULT_VERSION_MARK_KEY = "version"
# The value becomes part of ``<svc>-kt-mesh-<value>``; keep room for the service part.
VERSION_MARK_VALUE_MAX = 20


_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def shown(text: str, limit: int = 64) -> str:
    """A value quoted for an error line, cut so a huge one keeps the line short."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def is_dns1123_label(text: str) -> bool:
    """A Kubernetes name such as a namespace's: lowercase alnum and inner '-', <= 63."""
    return len(text) <= 63 and bool(_DNS1123_LABEL.match(text))


def is_dns1123_subdomain(text: str) -> bool:
    """A Kubernetes object name such as a Deployment's or a pod's: dot-separated
    labels, at most 253 characters."""
    return 0 < len(text) <= 253 and all(_DNS1123_LABEL.match(part) for part in text.split("."))


# An image reference as the container runtimes read it (distribution/reference).
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)


def parse_image(text: str) -> str:
    """An image reference such as ``registry.example.org:5000/ktpy/shadow:0.1.0``."""
    if len(text) > 512 or not _IMAGE.match(text):
        raise ValueError(
            f"{text[:80]!r} is not an image reference such as "
            "registry.example.org/ktpy/shadow:0.1.0 (lowercase repository, optional :tag)"
        )
    return text


def is_port_name(text: str) -> bool:
    return len(text) <= _PORT_NAME_MAX and bool(_PORT_NAME.match(text))


def parse_port_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{shown(text)} is not a port number")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {shown(text)} is out of range 1-65535")
    return int(text)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20}
_SIZE_UNITS |= {"g": 1 << 30, "gib": 1 << 30}


def parse_byte_size(text: str) -> int:
    """``64MiB``, ``512KiB``, ``1G`` (binary units; K/M/G mean the same) or bare bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 64MiB, 512KiB, or bytes)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class PortMapping:
    """One ``LOCAL:REMOTE`` pair of ``--expose``.

    ``remote`` is a number or the name of a Service port; the command resolves
    names (and Service port vs target port) against the real Service.
    """

    local: int
    remote: int | str

    def __str__(self) -> str:
        return f"{self.local}:{self.remote}"


def parse_expose(text: str) -> tuple[PortMapping, ...]:
    """Parse ``LOCAL:REMOTE[,LOCAL:REMOTE...]``; a bare ``PORT`` means ``PORT:PORT``."""
    mappings: list[PortMapping] = []
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            raise ValueError(f"empty entry in {text!r}; expected LOCAL:REMOTE[,LOCAL:REMOTE...]")
        if ":" in item:
            local_text, _, remote_text = item.partition(":")
            if not local_text or not remote_text:
                raise ValueError(f"{item!r} is not LOCAL:REMOTE")
            local = parse_port_number(local_text)
            remote: int | str
            if remote_text.isdigit():
                remote = parse_port_number(remote_text)
            elif is_port_name(remote_text):
                remote = remote_text
            else:
                raise ValueError(f"{shown(remote_text)} is neither a port number nor a port name")
        else:
            local = parse_port_number(item)
            remote = local
        mappings.append(PortMapping(local, remote))
    locals_seen: set[int] = set()
    remotes_seen: set[int | str] = set()
    for mapping in mappings:
        if mapping.local in locals_seen:
            raise ValueError(f"local port {mapping.local} appears twice")
        if mapping.remote in remotes_seen:
            raise ValueError(f"remote port {mapping.remote} appears twice")
        locals_seen.add(mapping.local)
        remotes_seen.add(mapping.remote)
    return tuple(mappings)


@dataclass(frozen=True)
class VersionMark:
    """``--version-mark``: the header (or label) key and value that pick a mesh version.

    ``value`` None means "generate one" (the ``key:`` form).
    """

    key: str
    value: str | None


def parse_version_mark(text: str) -> VersionMark:
    """Parse ``val``, ``key:val`` or ``key:``."""
    if ":" in text:
        key, _, value = text.partition(":")
    else:
        key, value = DEFAULT_VERSION_MARK_KEY, text
    if not VERSION_MARK_KEY.match(key) or len(key) > 63:
        raise ValueError(f"key {shown(key)} must match ^[a-z][a-z0-9_-]*$ (at most 63 characters)")
    if value == "":
        if ":" not in text:
            raise ValueError("empty version mark")
        return VersionMark(key, None)
    if not _VERSION_MARK_VALUE.match(value) or len(value) > VERSION_MARK_VALUE_MAX:
        raise ValueError(
            f"value {shown(value)} must be lowercase letters, digits and inner '-', "
            f"at most {VERSION_MARK_VALUE_MAX} characters"
        )
    return VersionMark(key, value)


def parse_cidr(text: str) -> IPNetwork:
    """Parse ``10.96.0.0/12``, ``fd00::/108``, or a single address as a host route."""
    if len(text) > 64:
        raise ValueError(f"{shown(text)} is not a CIDR such as 10.96.0.0/12")
    return _parse_cidr(text)


def _parse_cidr(text: str) -> IPNetwork:
    """Parse ``10.96.0.0/12``, ``fd00::/108``, or a single address as a host route."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR such as 10.96.0.0/12") from exc
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from exc


T = TypeVar("T")


class _ParserType(click.ParamType[T, Any]):
    """Shared plumbing: call a pure parser, turn ValueError into a usage error."""

    def _run(
        self,
        parser: Callable[[str], T],
        value: str,
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> T:
        try:
            return parser(value)
        except (ValueError, OverflowError) as exc:
            self.fail(str(exc), param, ctx)


class ExposeType(_ParserType[tuple[PortMapping, ...]]):
    name = "LOCAL:REMOTE[,...]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[PortMapping, ...]:
        if isinstance(value, tuple):
            return value
        return self._run(parse_expose, str(value), param, ctx)


class VersionMarkType(_ParserType[VersionMark]):
    name = "[KEY:]VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> VersionMark:
        if isinstance(value, VersionMark):
            return value
        return self._run(parse_version_mark, str(value), param, ctx)


class CidrType(_ParserType[IPNetwork]):
    name = "CIDR"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> IPNetwork:
        if isinstance(value, IPNetwork):
            return value
        return self._run(parse_cidr, str(value), param, ctx)


class DurationType(_ParserType[timedelta]):
    name = "DURATION"

    def __init__(self, minimum: timedelta = timedelta(0)) -> None:
        self.minimum = minimum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            result = value
        else:
            result = self._run(parse_duration, str(value), param, ctx)
        if result <= self.minimum:
            self.fail(
                f"{value!r} must be longer than {self.minimum.total_seconds():g}s", param, ctx
            )
        return result


class ImageType(_ParserType[str]):
    name = "IMAGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return self._run(parse_image, str(value), param, ctx)


def bounded_number(low: int, high: int) -> Callable[[str], int]:
    """A parser of a whole number in low..high that never echoes a huge value whole."""

    def parse(text: str) -> int:
        cleaned = text.strip()
        if (
            not cleaned.isdigit()
            or len(cleaned) > len(str(high))
            or not low <= int(cleaned) <= high
        ):
            raise ValueError(f"{shown(cleaned)} is not a number in {low}-{high}")
        return int(cleaned)

    return parse


class NumberType(_ParserType[int]):
    name = "INTEGER"

    def __init__(self, low: int, high: int) -> None:
        self.parse = bounded_number(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        return self._run(self.parse, str(value), param, ctx)


class PortType(_ParserType[int]):
    name = "PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        return self._run(parse_port_number, str(value).strip(), param, ctx)


def parse_dns1123_label(text: str) -> str:
    if not is_dns1123_label(text):
        raise ValueError(
            f"{shown(text)} is not a valid name: lowercase letters, digits and inner '-', "
            "at most 63 characters"
        )
    return text


class NameType(_ParserType[str]):
    """A Kubernetes object name such as a namespace's (DNS-1123 label)."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return self._run(parse_dns1123_label, str(value), param, ctx)


EXPOSE = ExposeType()
NAME = NameType()
VERSION_MARK = VersionMarkType()
CIDR = CidrType()
DURATION = DurationType()
PORT = PortType()
IMAGE = ImageType()


@dataclass(frozen=True)
class ForwardTarget:
    """One ``SVC[.NAMESPACE] [LOCAL[:REMOTE]]`` of ``ktpy forward``.

    ``local`` None: the same number as the Service port. ``remote`` None: the
    Service's first TCP port; a name or number is resolved against the Service.
    """

    service: str
    namespace: str | None = None
    local: int | None = None
    remote: int | str | None = None


def _parse_forward_ports(text: str) -> tuple[int | None, int | str | None]:
    local_text, colon, remote_text = text.partition(":")
    local = parse_port_number(local_text) if local_text else None
    if not colon:
        return local, None
    if not remote_text:
        raise ValueError(f"{text!r}: nothing after ':'; expected LOCAL[:REMOTE]")
    if remote_text.isdigit():
        return local, parse_port_number(remote_text)
    if is_port_name(remote_text):
        return local, remote_text
    raise ValueError(f"{shown(remote_text)} is neither a port number nor a port name")


def parse_forward_targets(tokens: tuple[str, ...] | list[str]) -> tuple[ForwardTarget, ...]:
    """``SVC [LOCAL[:REMOTE]] [SVC [LOCAL[:REMOTE]]]...``; also ``:REMOTE``.

    A token starting with a digit or ':' is ports (a Service name starts with a
    letter); anything else names a Service, optionally as ``svc.namespace``.
    """
    targets: list[ForwardTarget] = []
    ports_given = False
    for token in tokens:
        if token[:1].isdigit() or token.startswith(":"):
            if not targets:
                raise ValueError(f"{token!r} comes before any Service; expected SVC first")
            if ports_given:
                raise ValueError(
                    f"{token!r}: service {targets[-1].service!r} already has its ports"
                )
            local, remote = _parse_forward_ports(token)
            last = targets[-1]
            targets[-1] = ForwardTarget(last.service, last.namespace, local, remote)
            ports_given = True
            continue
        service, dot, namespace = token.partition(".")
        if not is_dns1123_label(service) or (dot and not is_dns1123_label(namespace)):
            raise ValueError(f"{shown(token)} is not a Service name (SVC or SVC.NAMESPACE)")
        targets.append(ForwardTarget(service, namespace or None))
        ports_given = False
    if not targets:
        raise ValueError("name at least one Service")
    given = [t.local for t in targets if t.local is not None]
    for port in given:
        if given.count(port) > 1:
            raise ValueError(f"local port {port} is given to two forwards")
    return tuple(targets)


def forward_targets_callback(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[ForwardTarget, ...]:
    """Click callback for ``ktpy forward``'s variadic argument."""
    try:
        return parse_forward_targets(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


F = TypeVar("F", bound=Callable[..., Any])


def session_file_options(command: F) -> F:
    """``--env-file``, ``--mount-dir`` and ``--keep`` of the session commands that take a
    Service's traffic (exchange, mesh): the pods' environment and files, for a session."""
    for option in reversed(
        (
            click.option(
                "--env-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Write the Service's pods' environment here (see 'ktpy env'); "
                "removed on exit.",
            ),
            click.option(
                "--mount-dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Write their ConfigMap, Secret and projected files under here; "
                "removed on exit.",
            ),
            click.option(
                "--keep", is_flag=True, help="Keep the --env-file and --mount-dir files on exit."
            ),
        )
    ):
        command = option(command)
    return command


class AliasedOption(click.Option):
    """An option that also answers to kt-connect's spelling (``--versionMark`` for
    ``--version-mark``), left out of --help and of shell completion so that ktpy's own
    spelling is the one taught: the aliases reach the parser only."""

    def __init__(
        self, param_decls: list[str], *, hidden_aliases: tuple[str, ...] = (), **attrs: Any
    ) -> None:
        super().__init__(param_decls, **attrs)
        self.hidden_aliases = hidden_aliases

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        shown = self.opts
        self.opts = [*shown, *self.hidden_aliases]
        try:
            super().add_to_parser(parser, ctx)
        finally:
            self.opts = shown


@dataclass(frozen=True)
class ServiceTarget:
    """A command's target as kubectl and kt-connect write it: ``NAME``, ``svc/NAME`` or
    ``service/NAME`` name a Service; ``deploy/NAME`` or ``deployment/NAME`` the
    Deployment whose pods the Service to use selects."""

    name: str
    deployment: bool = False

    def __str__(self) -> str:
        return f"deployment/{self.name}" if self.deployment else self.name


_SERVICE_KINDS = frozenset({"svc", "service", "services"})
_DEPLOYMENT_KINDS = frozenset({"deploy", "deployment", "deployments"})


def parse_service_target(text: str, *, deployments: bool = False) -> ServiceTarget:
    kind, slash, name = text.partition("/")
    if not slash:
        kind, name = "svc", text
    allowed = _SERVICE_KINDS | (_DEPLOYMENT_KINDS if deployments else frozenset())
    if kind.lower() not in allowed:
        forms = "NAME, svc/NAME" + (" or deploy/NAME" if deployments else "")
        raise ValueError(f"{text!r}: expected {forms}")
    return ServiceTarget(parse_dns1123_label(name), deployment=kind.lower() in _DEPLOYMENT_KINDS)


class ServiceNameType(_ParserType[str]):
    """A Service's name: ``NAME``, ``svc/NAME`` or ``service/NAME``."""

    name = "SERVICE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return self._run(lambda text: parse_service_target(text).name, str(value), param, ctx)


class ServiceTargetType(_ParserType[ServiceTarget]):
    """A Service, or a Deployment standing for the Service that selects its pods."""

    name = "SERVICE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> ServiceTarget:
        if isinstance(value, ServiceTarget):
            return value
        return self._run(
            lambda text: parse_service_target(text, deployments=True), str(value), param, ctx
        )


SERVICE = ServiceNameType()
SERVICE_TARGET = ServiceTargetType()
