"""Each failure class a user can meet, at ktpy's own wrappers, ends with its own
documented exit code and a hint, never InternalError (70, "a bug in ktpy").

The API's failures (5xx, 429, timeouts, an answer cut short) are mapped in
``tests/unit/cluster/test_api_client.py`` against a stand-in API server; a
writer that wins a fight over a field in ``tests/unit/cluster/test_guard.py``.
Here: the tunnel's first connect (port-forward refused, SSH banner and
authentication, with a real paramiko server on a socket pair), the host's undo
and journal failures, a session whose heartbeat the API server stopped
answering, and the table in docs/design.md.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import paramiko
import pytest
from click.testing import CliRunner

from ktpy import errors
from ktpy.cli import cli
from ktpy.cluster.api import NotFound, ServerError
from ktpy.cluster.labels import Role
from ktpy.errors import (
    ApiServerError,
    ApiTimeout,
    BadJournalEntry,
    ClusterUnreachable,
    HostChangeFailed,
    JournalProblem,
    KtpyError,
    PortForwardRefused,
    SshAuthFailed,
    SshHandshakeFailed,
    UndoFailed,
)
from ktpy.host import recovery
from ktpy.host.journal import Journal, parse
from ktpy.host.runner import Completed, check
from ktpy.host.undo import LinkDelete
from ktpy.logs import get_logger
from ktpy.session import _unanswered
from ktpy.session.link import TunnelLink, ssh_failure
from ktpy.session.shadow import ShadowSpec
from ktpy.tunnel import keys, ssh
from ktpy.tunnel.portforward import Target

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
TARGET = Target("dev", "nginx-kt-exchange-abcde", 2222)


# --- the tunnel's first connect ------------------------------------------------------------


class RefusingServer(paramiko.ServerInterface):
    """An sshd that knows no key of this session."""

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_FAILED


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def connect(sock: socket.socket, session: keys.SessionKeys) -> ssh.SshError:
    credentials = ssh.SshCredentials(session.client.pkey(), session.host.public)
    with pytest.raises(ssh.SshError) as caught:
        ssh.connect(sock, credentials, where="pod/x", timeout=10)
    return caught.value


def test_sshd_refusing_the_key_is_an_ssh_auth_failure(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server_sock = pair
    session = keys.generate_session_keys("s1")
    server = paramiko.Transport(server_sock)
    server.add_server_key(session.host.pkey())
    serving = threading.Thread(
        target=server.start_server, kwargs={"server": RefusingServer()}, daemon=True
    )
    serving.start()
    try:
        failure = ssh_failure(connect(client, session), None, TARGET)
    finally:
        server.close()
    assert type(failure) is SshAuthFailed
    assert failure.exit_code == 44
    assert "refused this session's key" in failure.format_message()
    assert "authorized_keys" in failure.hint


def test_something_that_is_not_sshd_is_a_handshake_failure(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server_sock = pair
    server_sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    server_sock.close()
    failure = ssh_failure(connect(client, keys.generate_session_keys("s1")), None, TARGET)
    assert type(failure) is SshHandshakeFailed
    assert failure.exit_code == 45
    assert "no SSH server answered" in failure.format_message()


def test_a_port_forward_the_kubelet_refused_is_named_with_its_words(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The kubelet says why on the port-forward's error channel, then closes: SSH sees
    no banner, and the error channel's text is the reason."""
    client, server_sock = pair
    server_sock.close()
    refused = "error forwarding port 2222 to pod abc, uid : failed to connect: connection refused"
    failure = ssh_failure(connect(client, keys.generate_session_keys("s1")), refused, TARGET)
    assert type(failure) is PortForwardRefused
    assert failure.exit_code == 43
    assert refused in failure.format_message()
    assert "pods/portforward" in failure.hint


def test_a_port_forward_upgrade_the_api_server_refused_is_port_forward_refused() -> None:
    """The pod went away between Ready and the first connect: the upgrade answers 404."""

    class Refusing:
        def open_websocket(self, path: str, subprotocols: object) -> object:
            raise NotFound(f"pods {TARGET.pod!r} not found", reason="NotFound")

    spec = ShadowSpec(role=Role.CONNECT, namespace="dev", pod_name=TARGET.pod, image="i")
    link = TunnelLink(
        Refusing(),  # type: ignore[arg-type]
        spec,
        keys.generate_session_keys("s1"),
        get_logger("test"),
        threading.Event(),
    )
    with pytest.raises(PortForwardRefused) as caught:
        link.connect()
    assert caught.value.exit_code == 43
    assert "(HTTP 404)" in caught.value.format_message()


# --- the host ------------------------------------------------------------------------------


def failing(argv: object) -> Completed:
    """``ip``: every change refused; the device is still there when asked."""
    args = tuple(argv) if isinstance(argv, (list, tuple)) else ("ip",)
    if "show" in args:
        return Completed(args, 0, "5: ktpy-ab12cd34: <POINTOPOINT,UP>", "")
    return Completed(args, 2, "", "RTNETLINK answers: Operation not permitted")


def test_a_failed_host_change_and_a_failed_undo_have_their_codes() -> None:
    with pytest.raises(HostChangeFailed) as changed:
        check(failing(()), "add route 10.96.0.0/16")
    assert changed.value.exit_code == 50
    with pytest.raises(UndoFailed) as undone:
        LinkDelete("ktpy-ab12cd34").carry_out(failing)
    assert undone.value.exit_code == 51


def test_journal_problems_have_their_codes(tmp_path: Path) -> None:
    with pytest.raises(BadJournalEntry) as bad:
        parse(b'{"format": "something else"}\n')
    assert bad.value.exit_code == 53
    journal = Journal.create(tmp_path, "ab12cd34")
    journal.close()
    with pytest.raises(JournalProblem) as closed:
        journal._require_fd()
    assert closed.value.exit_code == 52


def test_clean_local_that_could_not_undo_everything_exits_with_undo_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = recovery.CleanReport(problems=["journal x: cannot delete route: exit 2"])
    monkeypatch.setattr(recovery, "clean_local", lambda directory: report)
    config = tmp_path / "config.yaml"
    config.write_text("")
    result = CliRunner().invoke(cli, ["clean", "--local"], env={"KTPY_CONFIG": str(config)})
    assert result.exit_code == 51, result.output
    assert "some host changes could not be undone" in result.output


# --- a session whose API server stopped answering ------------------------------------------


@pytest.mark.parametrize(
    ("failure", "error", "code"),
    [
        (ClusterUnreachable("cannot reach https://x: refused"), ClusterUnreachable, 10),
        (ApiTimeout("the API server at https://x did not answer in time"), ApiTimeout, 17),
        (ServerError("etcdserver: request timed out", status=500), ApiServerError, 18),
        (KtpyError("something else"), ClusterUnreachable, 10),
    ],
)  # fmt: skip
def test_a_heartbeat_unanswered_for_stale_after_ends_the_session_with_its_code(
    failure: Exception, error: type[KtpyError], code: int
) -> None:
    reason, kind = _unanswered(failure, timedelta(seconds=6))
    assert kind is error
    assert kind(reason).exit_code == code
    assert reason.startswith("no heartbeat for 6s (stale-after)")


# --- the documented table ------------------------------------------------------------------


def test_every_error_class_is_in_the_design_table_with_its_code() -> None:
    table = (REPO / "docs" / "design.md").read_text()
    rows = {
        name: int(code)
        for code, name in re.findall(r"^\| (\d+) \| (\w+) \|", table, flags=re.MULTILINE)
    }
    for name in dir(errors):
        cls = getattr(errors, name)
        if not (isinstance(cls, type) and issubclass(cls, KtpyError)):
            continue
        if cls.exit_code > 128:  # signals: one row for the three
            continue
        assert rows.get(name) == cls.exit_code, f"{name} ({cls.exit_code}) not in docs/design.md"
        assert f"{cls.exit_code:<4}  {name}" in (errors.__doc__ or ""), name
