"""Reading a kubeconfig as kubectl does, with exec credential plugins run as the
person behind sudo rather than as root."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PluginUser:
    """Who exec credential plugins run as: the person behind sudo, with their home,
    where plugins such as gcloud's or aws's keep their credentials."""

    name: str
    uid: int
    gid: int
    home: str


def run_plugin_as(user_entry: dict[str, Any], who: PluginUser) -> None:
    """Rewrite a kubeconfig user's exec plugin in place to run as `who` (via setpriv).

    Under sudo, ktpy runs as root, but a plugin run as root finds root's cloud
    credentials, not the user's, and may leave root-owned caches in their home.
    Variables the kubeconfig sets itself are kept.
    """
    plugin = (user_entry.get("user") or {}).get("exec")
    if not plugin or not plugin.get("command"):
        return
    plugin["args"] = [
        f"--reuid={who.uid}",
        f"--regid={who.gid}",
        "--init-groups",
        "--",
        plugin["command"],
        *(plugin.get("args") or []),
    ]
    plugin["command"] = "setpriv"
    env = list(plugin.get("env") or [])
    given = {item.get("name") for item in env}
    for name, value in (("HOME", who.home), ("USER", who.name), ("LOGNAME", who.name)):
        if name not in given:
            env.append({"name": name, "value": value})
    plugin["env"] = env


def load_kubeconfig(
    paths: Sequence[str | os.PathLike[str]],
    context: str | None,
    configuration: Any,
    plugins_as: PluginUser | None,
) -> None:
    """What kubernetes.config.load_kube_config does, with exec plugins rewritten."""
    from kubernetes.config import kube_config
    from kubernetes.config.config_exception import ConfigException

    merged = kube_config.KubeConfigMerger(  # type: ignore[no-untyped-call]
        os.pathsep.join(str(p) for p in paths)
    )
    if merged.config is None:
        raise ConfigException("Invalid kube-config file. No configuration found.")
    if plugins_as is not None:
        for node in merged.config.value.get("users") or []:
            run_plugin_as(getattr(node, "value", node), plugins_as)
    loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
        config_dict=merged.config, active_context=context, config_base_path=None
    )
    loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
