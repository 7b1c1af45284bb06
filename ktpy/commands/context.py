"""What every command gets from its Click context: the resolved settings, the API
client built from them, and the global options (kubectl's) wherever they were given."""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

from ktpy.cluster.api import ClusterApi, KubernetesApi, PluginUser
from ktpy.config import Settings

# Where the global options' values wait, on the root context, until settings are resolved.
_GLOBAL_FLAGS = "ktpy.global_flags"


def remember_global_flag(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback of every global option, before or after the command's name: the value
    given last on the command line wins, as in kubectl; an option not given changes
    nothing (so ``ktpy --debug status`` keeps its --debug)."""
    if param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        ctx.find_root().meta.setdefault(_GLOBAL_FLAGS, {})[param.name] = value
    return value


def global_flags(ctx: click.Context) -> dict[str, Any]:
    """The global options given so far, by parameter name."""
    return dict(ctx.find_root().meta.get(_GLOBAL_FLAGS, {}))


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the ktpy group sets ctx.obj"
    return settings


def make_api(settings: Settings, *, timeout: float | None = None) -> ClusterApi:
    """timeout: per request, for callers that must not wait long (shell completion)."""
    who = settings.invoker
    # Under sudo, plugins run as the person behind it; a connect that gave root up
    # already is that person (or nobody), and runs them itself.
    still_root = os.geteuid() == 0
    plugins_as = (
        PluginUser(who.user, who.uid, who.gid, str(who.home))
        if who.via_sudo and still_root
        else None
    )
    if timeout is None:
        return KubernetesApi.from_kubeconfig(
            settings.kubeconfig, settings.context, plugins_as=plugins_as
        )
    return KubernetesApi.from_kubeconfig(
        settings.kubeconfig, settings.context, plugins_as=plugins_as, timeout=timeout
    )
