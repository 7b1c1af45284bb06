"""Under sudo, kubeconfig exec plugins run as the person behind sudo."""

from __future__ import annotations

from typing import Any

from ktpy.cluster.api import PluginUser, run_plugin_as
from ktpy.cluster.api.kubeconfig import bound_plugin, plugin_failure

ALICE = PluginUser(name="alice", uid=1000, gid=1000, home="/home/alice")


def test_the_plugin_runs_through_setpriv_as_the_user_with_their_home() -> None:
    entry: dict[str, Any] = {
        "name": "alice@gke",
        "user": {"exec": {"command": "gke-gcloud-auth-plugin", "args": ["--flag"]}},
    }
    run_plugin_as(entry, ALICE)
    plugin = entry["user"]["exec"]
    assert plugin["command"] == "setpriv"
    assert plugin["args"] == [
        "--reuid=1000", "--regid=1000", "--init-groups", "--", "gke-gcloud-auth-plugin", "--flag",
    ]  # fmt: skip
    assert {"name": "HOME", "value": "/home/alice"} in plugin["env"]
    assert {"name": "USER", "value": "alice"} in plugin["env"]


def test_variables_the_kubeconfig_sets_are_kept() -> None:
    entry: dict[str, Any] = {
        "user": {"exec": {"command": "aws", "env": [{"name": "HOME", "value": "/srv/ci"}]}}
    }
    run_plugin_as(entry, ALICE)
    homes = [item["value"] for item in entry["user"]["exec"]["env"] if item["name"] == "HOME"]
    assert homes == ["/srv/ci"]


def test_users_without_a_plugin_are_left_alone() -> None:
    entry: dict[str, Any] = {"user": {"token": "abc"}}
    run_plugin_as(entry, ALICE)
    assert entry == {"user": {"token": "abc"}}


def test_every_plugin_is_bounded_in_time() -> None:
    entry: dict[str, Any] = {"user": {"exec": {"command": "kubelogin", "args": ["get-token"]}}}
    bound_plugin(entry, 30)
    plugin = entry["user"]["exec"]
    assert plugin["command"] == "timeout"
    assert plugin["args"] == ["--foreground", "--kill-after=2", "30", "kubelogin", "get-token"]


def test_a_plugin_failure_or_timeout_is_said_naming_the_plugin() -> None:
    assert plugin_failure("kubelogin", ["exec: process returned 124"], 30) == (
        "the exec credential plugin 'kubelogin' did not answer within 30s"
    )
    assert plugin_failure("aws", ["exec: process returned 1. expired"], 30) == (
        "the exec credential plugin 'aws' failed: exec: process returned 1. expired"
    )
