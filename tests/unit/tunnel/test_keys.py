import contextlib
import socket
import stat
import threading
from pathlib import Path

import paramiko
import pytest

from ktpy.errors import HostKeyMismatch
from ktpy.tunnel.keys import (
    check_host_key,
    generate_key_pair,
    generate_session_keys,
    host_key_matches,
    write_private_key,
)


def test_formats() -> None:
    keys = generate_session_keys("ab12cd34")
    assert keys.client.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert keys.client.public.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert keys.client.public.endswith(" ktpy-client-ab12cd34")
    assert keys.host.public.endswith(" ktpy-host-ab12cd34")
    assert keys.authorized_keys == keys.client.public + "\n"
    assert "PRIVATE" not in keys.authorized_keys


def test_every_session_gets_new_distinct_keys() -> None:
    first, second = generate_session_keys("s1"), generate_session_keys("s1")
    blobs = {
        first.client.public_blob,
        first.host.public_blob,
        second.client.public_blob,
        second.host.public_blob,
    }
    assert len(blobs) == 4


def test_private_key_is_not_in_the_repr() -> None:
    pair = generate_key_pair("c")
    assert "PRIVATE" not in repr(pair)


def test_private_and_public_halves_belong_together() -> None:
    pair = generate_key_pair("c")
    assert pair.pkey().get_base64() == pair.public_blob


def test_pinning_accepts_only_the_pinned_key() -> None:
    keys = generate_session_keys("s1")
    host = keys.host.pkey()
    assert host_key_matches(host, keys.host.public)
    assert not host_key_matches(host, keys.client.public)
    assert not host_key_matches(host, "ssh-rsa " + keys.host.public_blob)
    assert not host_key_matches(host, "")
    check_host_key(host, keys.host.public, "pod/x")
    with pytest.raises(HostKeyMismatch, match="pod/x"):
        check_host_key(host, keys.client.public, "pod/x")


class _Server(paramiko.ServerInterface):
    def __init__(self, authorized_blob: str) -> None:
        self.authorized_blob = authorized_blob

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "kt" and key.get_base64() == self.authorized_blob:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED


def _connect(
    server_key: paramiko.PKey, authorized_blob: str, client_key: paramiko.PKey, pinned: str
) -> bool:
    """One SSH handshake over a socketpair (no network); whether the client got in."""
    client_sock, server_sock = socket.socketpair()
    server = paramiko.Transport(server_sock)
    server.add_server_key(server_key)

    def serve() -> None:
        # The client hangs up mid-handshake when the host key is wrong; that is the point.
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            server.start_server(server=_Server(authorized_blob))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = paramiko.Transport(client_sock)
    try:
        client.start_client(timeout=10)
        # Pin before authenticating: nothing is sent to a server that is not the shadow.
        check_host_key(client.get_remote_server_key(), pinned, "socketpair")
        try:
            client.auth_publickey("kt", client_key)
        except paramiko.AuthenticationException:
            return False
        return client.is_authenticated()
    finally:
        client.close()
        server.close()
        thread.join(5)


@pytest.mark.timeout(30)
def test_a_paramiko_handshake_pins_the_host_and_authenticates_the_client() -> None:
    keys = generate_session_keys("s1")
    host, blob = keys.host.pkey(), keys.client.public_blob
    assert _connect(host, blob, keys.client.pkey(), keys.host.public)
    intruder = generate_key_pair("intruder")
    assert not _connect(host, blob, intruder.pkey(), keys.host.public)
    with pytest.raises(HostKeyMismatch):
        _connect(intruder.pkey(), blob, keys.client.pkey(), keys.host.public)


def test_write_private_key_is_0600_in_a_0700_dir(tmp_path: Path) -> None:
    pair = generate_key_pair("c")
    path = write_private_key(tmp_path / "rt", "s1.key", pair)
    assert path.read_text() == pair.private_openssh
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_write_private_key_never_overwrites(tmp_path: Path) -> None:
    pair = generate_key_pair("c")
    write_private_key(tmp_path / "rt", "s1.key", pair)
    with pytest.raises(FileExistsError):
        write_private_key(tmp_path / "rt", "s1.key", pair)


def test_write_private_key_refuses_a_shared_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(PermissionError, match="private"):
        write_private_key(shared, "s1.key", generate_key_pair("c"))
