"""Settings: where each value comes from, resolved once, then frozen.

Precedence, highest first: command-line flag > environment (``KTPY_*``) >
the YAML config file > built-in default. The namespace has one more step
before the built-in ``default``: the namespace of the kubeconfig context, as
kubectl does. ``Settings.sources`` records where each value came from, so
``--debug`` and the docs can say why a value is what it is.

Under ``sudo`` (``SUDO_USER`` set and euid 0) the person at the keyboard is
the invoking user, not root: their config file and kubeconfig are read (home
from the password database, not ``$HOME``), they are the recorded owner of
the session, and the journal of host changes lives in a fixed root-owned
place, so that ``sudo ktpy clean --local`` finds it whatever the environment.

Nothing here touches the process's real environment or files except through
``load_settings``; ``resolve_settings`` takes everything it reads as arguments.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ktpy import __version__
from ktpy.durations import parse_duration
from ktpy.errors import ConfigProblem
from ktpy.logs import LogFormat
from ktpy.params import is_dns1123_label, parse_byte_size, parse_image, parse_port_number

DEFAULT_IMAGE = f"ghcr.io/ktpy/shadow:{__version__}"
DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=30)
DEFAULT_STALE_AFTER = timedelta(minutes=3)
DEFAULT_SOCKS_PORT = 2223
# The TUN device's MTU, for the device (host) and the TCP stack on it (net).
# Measured (benchmarks/tun_stack.py, docs/performance.md): with offloads the
# MTU hardly matters (64 KiB segments either way); on a plain device 65000
# moves five to six times what 1500 does, Python paying per packet. Below
# 65535, the largest IPv4 packet.
TUN_MTU = 65000
DEFAULT_POD_START_TIMEOUT = timedelta(seconds=60)
# What the TUN stack may hold for all flows together (ktpy.net.tcp's pool).
DEFAULT_TUN_BUFFER = 64 << 20
TUN_BUFFER_RANGE = (1 << 20, 4 << 30)
ROOT_JOURNAL_DIR = Path("/var/lib/ktpy/journal")
ROOT_RUNTIME_DIR = Path("/run/ktpy")

BUILT_IN = "built-in"


@dataclass(frozen=True)
class Invoker:
    """The person running ktpy, seen through sudo if need be."""

    user: str
    uid: int
    gid: int
    home: Path
    via_sudo: bool
    is_root: bool


PasswdLookup = Callable[[str], pwd.struct_passwd]
PasswdLookupByUid = Callable[[int], pwd.struct_passwd]
UNPRIVILEGED_USER = "nobody"


def unprivileged_identity(
    invoker: Invoker, by_name: PasswdLookup = pwd.getpwnam
) -> tuple[int, int] | None:
    """(uid, gid) for the code that parses network input when ktpy runs as root: the
    invoking user under sudo, else ``nobody``; None when ktpy is not root at all."""
    if not invoker.is_root:
        return None
    if invoker.via_sudo:
        return invoker.uid, invoker.gid
    try:
        entry = by_name(UNPRIVILEGED_USER)
    except KeyError:
        return 65534, 65534  # nobody/nogroup on every Linux distribution
    return entry.pw_uid, entry.pw_gid


def detect_invoker(
    environ: Mapping[str, str],
    euid: int,
    uid: int,
    by_name: PasswdLookup = pwd.getpwnam,
    by_uid: PasswdLookupByUid = pwd.getpwuid,
) -> Invoker:
    sudo_user = environ.get("SUDO_USER")
    if euid == 0 and sudo_user and sudo_user != "root":
        try:
            entry = by_name(sudo_user)
        except KeyError:
            raise ConfigProblem(
                f"SUDO_USER={sudo_user!r} is not a user of this machine",
                hint="Run ktpy through sudo as a real user, or unset SUDO_USER.",
            ) from None
        return Invoker(
            user=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            home=Path(entry.pw_dir),
            via_sudo=True,
            is_root=True,
        )
    try:
        entry = by_uid(uid)
        user, home, gid = entry.pw_name, Path(entry.pw_dir), entry.pw_gid
    except KeyError:
        # A uid without a passwd entry (common in containers): fall back to the environment.
        user = environ.get("USER") or environ.get("LOGNAME") or str(uid)
        home = Path(environ.get("HOME") or "/")
        gid = uid
    return Invoker(user=user, uid=uid, gid=gid, home=home, via_sudo=False, is_root=euid == 0)


def config_file_path(invoker: Invoker, environ: Mapping[str, str]) -> Path:
    if explicit := environ.get("KTPY_CONFIG"):
        return Path(explicit)
    # Under sudo the environment is root's (or a mix); only the passwd home is the user's.
    xdg = None if invoker.via_sudo else environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else invoker.home / ".config"
    return base / "ktpy" / "config.yaml"


def journal_dir(invoker: Invoker, environ: Mapping[str, str]) -> Path:
    if invoker.is_root:
        return ROOT_JOURNAL_DIR
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else invoker.home / ".local" / "state"
    return base / "ktpy" / "journal"


def runtime_dir(invoker: Invoker, environ: Mapping[str, str]) -> Path:
    if invoker.is_root:
        return ROOT_RUNTIME_DIR
    if xdg := environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "ktpy"
    return Path("/tmp") / f"ktpy-{invoker.uid}"  # noqa: S108 (per-user name, created 0700)


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file as a mapping; a missing file is an empty one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigProblem(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigProblem(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigProblem(f"config file {path} must hold a mapping of settings")
    unknown = sorted(str(key) for key in data if key not in _CONFIG_KEYS)
    if unknown:
        raise ConfigProblem(
            f"unknown setting(s) in {path}: {', '.join(unknown)}",
            hint=f"Known settings: {', '.join(sorted(_CONFIG_KEYS))}.",
        )
    return data


def kubeconfig_paths(value: str, invoker: Invoker) -> tuple[Path, ...]:
    """kubectl's rule: a path list separated by ``:``; ``~`` is the invoker's home."""
    paths = []
    for part in value.split(os.pathsep):
        if not part:
            continue
        if part == "~" or part.startswith("~/"):
            paths.append(invoker.home / part[2:])
        else:
            paths.append(Path(part))
    return tuple(paths)


@dataclass(frozen=True)
class KubeconfigView:
    """The little ktpy needs from kubeconfig files before the API client loads them."""

    current_context: str | None
    context_namespaces: Mapping[str, str | None]


def unreadable_kubeconfig(path: object, exc: Exception) -> ConfigProblem:
    """A kubeconfig that cannot be read or parsed, in one line (YAML errors span several)."""
    return ConfigProblem(
        f"cannot read kubeconfig {path}: {' '.join(str(exc).split())}",
        hint="Check --kubeconfig/KUBECONFIG; 'kubectl config view' shows what kubectl reads.",
    )


def read_kubeconfig_view(paths: tuple[Path, ...]) -> KubeconfigView:
    """Merge as kubectl does: the first file that sets a value wins; missing files are skipped."""
    current: str | None = None
    namespaces: dict[str, str | None] = {}
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, UnicodeError, yaml.YAMLError) as exc:
            raise unreadable_kubeconfig(path, exc) from exc
        if not isinstance(data, dict):
            continue
        if current is None and isinstance(data.get("current-context"), str):
            current = data["current-context"] or None
        for entry in data.get("contexts") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            if entry["name"] in namespaces:
                continue
            body = entry.get("context") or {}
            namespace = body.get("namespace") if isinstance(body, dict) else None
            namespaces[entry["name"]] = namespace if isinstance(namespace, str) else None
    return KubeconfigView(current, MappingProxyType(namespaces))


@dataclass(frozen=True)
class Settings:
    kubeconfig: tuple[Path, ...]
    context: str | None
    namespace: str
    image: str
    debug: bool
    log_format: LogFormat
    heartbeat_interval: timedelta
    stale_after: timedelta
    socks_port: int
    pod_start_timeout: timedelta
    tun_buffer: int
    owner: str
    invoker: Invoker
    config_file: Path
    journal_dir: Path
    runtime_dir: Path
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def source_of(self, name: str) -> str:
        return self.sources.get(name, BUILT_IN)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_log_format(text: str) -> LogFormat:
    try:
        return LogFormat(text.strip().lower())
    except ValueError:
        raise ValueError(f"{text!r} is not one of: console, json") from None


def _parse_positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} must be longer than zero")
    return value


def _parse_namespace(text: str) -> str:
    if not is_dns1123_label(text):
        raise ValueError(f"{text!r} is not a valid namespace name")
    return text


def _parse_tun_buffer(text: str) -> int:
    size = parse_byte_size(text)
    low, high = TUN_BUFFER_RANGE
    if not low <= size <= high:
        raise ValueError(f"{text!r} is outside 1MiB..4GiB")
    return size


def _parse_text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty value")
    return text.strip()


@dataclass(frozen=True)
class _Spec:
    name: str
    env: str
    key: str
    parse: Callable[[str], Any]


_SPECS = (
    _Spec("kubeconfig", "KTPY_KUBECONFIG", "kubeconfig", _parse_text),
    _Spec("context", "KTPY_CONTEXT", "context", _parse_text),
    _Spec("namespace", "KTPY_NAMESPACE", "namespace", _parse_namespace),
    _Spec("image", "KTPY_IMAGE", "image", parse_image),
    _Spec("debug", "KTPY_DEBUG", "debug", _parse_bool),
    _Spec("log_format", "KTPY_LOG_FORMAT", "log-format", _parse_log_format),
    _Spec(
        "heartbeat_interval",
        "KTPY_HEARTBEAT_INTERVAL",
        "heartbeat-interval",
        _parse_positive_duration,
    ),
    _Spec("stale_after", "KTPY_STALE_AFTER", "stale-after", _parse_positive_duration),
    _Spec("socks_port", "KTPY_SOCKS_PORT", "socks-port", parse_port_number),
    _Spec(
        "pod_start_timeout",
        "KTPY_POD_START_TIMEOUT",
        "pod-start-timeout",
        _parse_positive_duration,
    ),
    _Spec("tun_buffer", "KTPY_TUN_BUFFER", "tun-buffer", _parse_tun_buffer),
)
_CONFIG_KEYS = frozenset(spec.key for spec in _SPECS)
ENVIRONMENT_VARIABLES = (*(spec.env for spec in _SPECS), "KTPY_CONFIG")


def resolve_settings(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str],
    invoker: Invoker,
    hostname: str,
) -> Settings:
    """Resolve every setting from ``flags`` (already parsed; absent or None = not given),
    ``environ``, the config file and the built-in defaults."""
    config_path = config_file_path(invoker, environ)
    config = read_config_file(config_path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    for spec in _SPECS:
        if flags.get(spec.name) is not None:
            values[spec.name] = flags[spec.name]
            sources[spec.name] = f"flag --{spec.key}"
            continue
        raw: object = None
        origin = ""
        if spec.env in environ:
            raw, origin = environ[spec.env], f"environment {spec.env}"
        elif spec.name == "kubeconfig" and environ.get("KUBECONFIG"):
            raw, origin = environ["KUBECONFIG"], "environment KUBECONFIG"
        elif spec.key in config:
            raw, origin = config[spec.key], f"config {config_path} ({spec.key})"
        if origin:
            try:
                values[spec.name] = spec.parse(_yaml_scalar_text(raw))
            except ValueError as exc:
                raise ConfigProblem(f"bad value from {origin}: {exc}") from None
            sources[spec.name] = origin

    if "kubeconfig" in values:
        kubeconfig = kubeconfig_paths(str(values["kubeconfig"]), invoker)
    else:
        kubeconfig = (invoker.home / ".kube" / "config",)
        sources["kubeconfig"] = BUILT_IN

    context = values.get("context")
    namespace = values.get("namespace")
    if namespace is None:
        view = read_kubeconfig_view(kubeconfig)
        context_name = context or view.current_context
        context_namespace = view.context_namespaces.get(context_name) if context_name else None
        if context_namespace:
            namespace = context_namespace
            sources["namespace"] = f"kubeconfig context {context_name}"
        else:
            namespace = "default"
            sources["namespace"] = BUILT_IN

    heartbeat_interval = values.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)
    stale_after = values.get("stale_after", DEFAULT_STALE_AFTER)
    if stale_after < 2 * heartbeat_interval:
        raise ConfigProblem(
            f"stale-after ({stale_after.total_seconds():g}s, {_source(sources, 'stale_after')}) "
            f"must be at least twice heartbeat-interval ({heartbeat_interval.total_seconds():g}s,"
            f" {_source(sources, 'heartbeat_interval')}), or live sessions would look stale"
        )

    for spec in _SPECS:
        sources.setdefault(spec.name, BUILT_IN)
    return Settings(
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        image=values.get("image", DEFAULT_IMAGE),
        debug=bool(values.get("debug", False)),
        log_format=values.get("log_format", LogFormat.CONSOLE),
        heartbeat_interval=heartbeat_interval,
        stale_after=stale_after,
        socks_port=values.get("socks_port", DEFAULT_SOCKS_PORT),
        pod_start_timeout=values.get("pod_start_timeout", DEFAULT_POD_START_TIMEOUT),
        tun_buffer=values.get("tun_buffer", DEFAULT_TUN_BUFFER),
        owner=f"{invoker.user}@{hostname}",
        invoker=invoker,
        config_file=config_path,
        journal_dir=journal_dir(invoker, environ),
        runtime_dir=runtime_dir(invoker, environ),
        sources=MappingProxyType(sources),
    )


def _source(sources: Mapping[str, str], name: str) -> str:
    return sources.get(name, BUILT_IN)


def _yaml_scalar_text(raw: object) -> str:
    """Config values may be YAML numbers or booleans; parsers take text."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float | str):
        return str(raw)
    raise ValueError(f"expected a single value, got {type(raw).__name__}")


def load_settings(flags: Mapping[str, Any]) -> Settings:
    """Resolve settings for this process, from its real environment and files."""
    environ = dict(os.environ)
    invoker = detect_invoker(environ, os.geteuid(), os.getuid())
    return resolve_settings(flags, environ=environ, invoker=invoker, hostname=socket.gethostname())
