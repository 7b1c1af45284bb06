"""The root helper's orders and answers, as JSON (the process itself runs in the
e2e tests: tests/e2e/commands/test_connect_tun.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ktpy.errors import AlreadyRunning, HostChangeFailed, UndoFailed
from ktpy.host.helper import Helper, error_from, error_json, request_from, request_json
from ktpy.host.network import HostRequest


def test_a_request_survives_the_channel() -> None:
    request = HostRequest(
        session="ab12cd34",
        ranges=(ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("10.244.0.0/16")),
        api_addresses=(ipaddress.ip_address("10.250.0.1"),),
        routing_domains=("cluster.local", "default"),
        search_domains=("default.svc.cluster.local",),
        mtu=1500,
        force=True,
    )
    assert request_from(request_json(request)) == request


def test_an_error_comes_back_as_its_own_class_with_its_exit_code_and_hint() -> None:
    back = error_from(error_json(UndoFailed("route 10.96.0.0/16 stayed", hint="do this")))
    assert type(back) is UndoFailed
    assert back.exit_code == 51
    assert back.format_message() == "route 10.96.0.0/16 stayed"
    assert back.hint == "do this"
    assert type(error_from(error_json(AlreadyRunning("x")))) is AlreadyRunning


def test_an_unknown_error_class_becomes_a_host_change_failure() -> None:
    back = error_from({"class": "NotAnError", "message": "m", "hint": None})
    assert type(back) is HostChangeFailed
    assert back.exit_code == 50


@pytest.mark.parametrize(
    "order",
    [
        {"op": "open", "search": []},  # nothing surveyed yet
        {"op": "resolver"},  # no network yet
        {"op": "route_names", "domains": ["x"]},  # no resolver yet
        {"op": "unlink", "path": "/etc/passwd"},  # no such order
    ],
)
def test_orders_out_of_turn_are_refused_and_change_nothing(
    tmp_path: Path, order: dict[str, object]
) -> None:
    helper = Helper(tmp_path / "journal", None)
    with pytest.raises(HostChangeFailed, match="cannot take"):
        helper.handle(order)
    assert not (tmp_path / "journal").exists()  # no journal: nothing was changed


def test_close_undoes_once_and_removes_the_runtime_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "kubeconfig").write_text("")
    helper = Helper(tmp_path / "journal", run_dir)
    assert helper.handle({"op": "close"}) == ({"failures": []}, [])
    assert not run_dir.exists()
    assert helper.close() == {"failures": []}
