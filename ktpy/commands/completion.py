"""Shell completion of the cluster's names: namespaces for -n, Services for a
command's SERVICE, read from the cluster with the global options typed so far.

Completion runs on every Tab: it asks the API server once, briefly, and on any
failure (no cluster, no right to list) completes nothing rather than print.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from ktpy import logs
from ktpy.cluster.api import ApiError, Kind
from ktpy.commands.context import global_flags, make_api
from ktpy.config import Settings, load_settings
from ktpy.errors import KtpyError

# Seconds per request: a Tab that hangs is worse than one that completes nothing.
TIMEOUT = 3.0


def _settings(ctx: click.Context) -> Settings | None:
    flags: dict[str, Any] = global_flags(ctx)
    if flags.get("log_format") is not None:
        flags["log_format"] = logs.LogFormat(flags["log_format"])
    try:
        return load_settings(flags)
    except KtpyError:
        return None


def _names(ctx: click.Context, kind: Kind, incomplete: str) -> list[CompletionItem]:
    settings = _settings(ctx)
    if settings is None:
        return []
    namespace = settings.namespace if kind.namespaced else None
    try:
        listed = make_api(settings, timeout=TIMEOUT).list_objects(kind, namespace)
    except (ApiError, KtpyError, OSError):
        return []
    names = sorted(str((item.get("metadata") or {}).get("name", "")) for item in listed.items)
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def namespaces(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, Kind.NAMESPACE, incomplete)


def services(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Services of the namespace given so far (-n before or after the command)."""
    kind, slash, rest = incomplete.rpartition("/")
    items = _names(ctx, Kind.SERVICE, rest if slash else incomplete)
    if slash:  # svc/ng<Tab> completes to svc/nginx
        return [CompletionItem(f"{kind}/{item.value}") for item in items]
    return items
