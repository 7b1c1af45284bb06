"""What every command gets from its Click context: the resolved settings, and
the API client built from them."""

from __future__ import annotations

import click

from ktpy.cluster.api import ClusterApi, KubernetesApi, PluginUser
from ktpy.config import Settings


def settings_of(ctx: click.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the ktpy group sets ctx.obj"
    return settings


def make_api(settings: Settings) -> ClusterApi:
    who = settings.invoker
    plugins_as = PluginUser(who.user, who.uid, who.gid, str(who.home)) if who.via_sudo else None
    return KubernetesApi.from_kubeconfig(
        settings.kubeconfig, settings.context, plugins_as=plugins_as
    )
