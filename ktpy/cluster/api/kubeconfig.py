"""Reading a kubeconfig as kubectl does, with exec credential plugins run as the
person behind sudo rather than as root; and one kubeconfig made of several, with
the files they name read in (``flattened``)."""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# An exec credential plugin that neither answers nor fails in this time is stopped:
# ktpy must not hang on a plugin waiting for a login nobody will make.
PLUGIN_TIMEOUT_SECONDS = 30.0
# timeout(1)'s exit status when it stopped the command.
_TIMED_OUT = 124


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


def bound_plugin(user_entry: dict[str, Any], seconds: float) -> None:
    """Rewrite a kubeconfig user's exec plugin in place to be stopped after `seconds`
    (by coreutils' timeout; --foreground keeps an interactive plugin's terminal)."""
    plugin = (user_entry.get("user") or {}).get("exec")
    if not plugin or not plugin.get("command"):
        return
    plugin["args"] = [
        "--foreground",
        "--kill-after=2",
        f"{seconds:g}",
        plugin["command"],
        *(plugin.get("args") or []),
    ]
    plugin["command"] = "timeout"


def plugin_failure(command: str, logged: list[str], seconds: float) -> str:
    """What went wrong with an exec plugin, from what the client library logged."""
    if any(f"process returned {_TIMED_OUT}" in line for line in logged):
        return f"the exec credential plugin {command!r} did not answer within {seconds:g}s"
    reason = "; ".join(logged) or "it gave no credentials"
    return f"the exec credential plugin {command!r} failed: {reason}"


@contextlib.contextmanager
def _library_errors() -> Iterator[list[str]]:
    """The client library logs a failed exec plugin (on the root logger) and goes on
    without credentials; collect those lines instead of letting them through."""
    collected: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage().startswith("exec:"):
            collected.append(record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield collected
    finally:
        root.removeFilter(keep)


def load_kubeconfig(
    paths: Sequence[str | os.PathLike[str]],
    context: str | None,
    configuration: Any,
    plugins_as: PluginUser | None,
    plugin_timeout: float | None = None,
) -> None:
    """What kubernetes.config.load_kube_config does, with exec plugins rewritten
    (bounded by ``plugin_timeout``, default PLUGIN_TIMEOUT_SECONDS)."""
    seconds = PLUGIN_TIMEOUT_SECONDS if plugin_timeout is None else plugin_timeout
    from kubernetes.config import kube_config
    from kubernetes.config.config_exception import ConfigException

    merged = kube_config.KubeConfigMerger(  # type: ignore[no-untyped-call]
        os.pathsep.join(str(p) for p in paths)
    )
    if merged.config is None:
        raise ConfigException("Invalid kube-config file. No configuration found.")
    commands: dict[str, str] = {}  # user name -> its plugin's own command, for messages
    for node in merged.config.value.get("users") or []:
        entry = getattr(node, "value", node)
        plugin = (entry.get("user") or {}).get("exec") or {}
        commands[str(entry.get("name"))] = str(plugin.get("command"))
        if plugins_as is not None:
            run_plugin_as(entry, plugins_as)
        bound_plugin(entry, seconds)

    class Loader(kube_config.KubeConfigLoader):
        def _load_from_exec_plugin(self) -> bool | None:
            found: Any = self._user
            if found is None or "exec" not in found:
                return None
            with _library_errors() as logged:
                loaded = super()._load_from_exec_plugin()  # type: ignore[no-untyped-call]
            if not loaded:
                current: Any = self._current_context
                user = str(current["context"]["user"])
                command = commands.get(user, "?")
                raise ConfigException(plugin_failure(command, logged, seconds))
            return True

    loader = Loader(  # type: ignore[no-untyped-call]
        config_dict=merged.config, active_context=context, config_base_path=None
    )
    loader.load_and_set(configuration)  # type: ignore[no-untyped-call]


# Keys naming a file, and the key that holds the same content inline (base64 but
# for the token), as in `kubectl config view --flatten --raw`.
_CLUSTER_FILES = (("certificate-authority", "certificate-authority-data"),)
_USER_FILES = (
    ("client-certificate", "client-certificate-data"),
    ("client-key", "client-key-data"),
    ("tokenFile", "token"),
)


def _inline(entry: dict[str, Any], keys: tuple[tuple[str, str], ...], base: Path) -> None:
    for file_key, data_key in keys:
        named = entry.pop(file_key, None)
        if not named or entry.get(data_key):
            continue
        content = (base / Path(str(named)).expanduser()).read_bytes()
        entry[data_key] = (
            content.decode().strip() if data_key == "token" else base64.b64encode(content).decode()
        )


def flattened(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """The kubeconfig files merged as kubectl merges them (the first file to name a
    cluster, user or context wins; the first current-context), with every file they
    name read in: one self-contained kubeconfig, for a process that reads the files
    as root and then gives root up."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for key in ("clusters", "users", "contexts"):
        merged[key] = []
    seen: dict[str, set[str]] = {key: set() for key in ("clusters", "users", "contexts")}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            continue  # as kubectl: a missing file in KUBECONFIG is skipped
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise yaml.YAMLError(f"{path} is not a kubeconfig")
        if not merged.get("current-context") and loaded.get("current-context"):
            merged["current-context"] = loaded["current-context"]
        base = path.resolve().parent
        for key, inner, files in (
            ("clusters", "cluster", _CLUSTER_FILES),
            ("users", "user", _USER_FILES),
            ("contexts", "context", ()),
        ):
            for item in loaded.get(key) or []:
                name = str(item.get("name"))
                if name in seen[key]:
                    continue
                seen[key].add(name)
                item = copy.deepcopy(item)
                _inline(item.get(inner) or {}, files, base)
                merged[key].append(item)
    return merged
