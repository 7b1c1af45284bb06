"""Per-session SSH keys, made in memory on the laptop.

Each session makes two Ed25519 key pairs: the client's, whose public half
goes to the shadow pod (``authorized_keys``) and whose private half never
leaves this process (at most a 0600 file in the user's runtime dir, for a
tool that needs a path), and the shadow's host key pair, handed to the pod
through its Secret and pinned here, so the client trusts exactly that key
and nothing on first use.
"""

from __future__ import annotations

import hmac
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ktpy.errors import HostKeyMismatch

KEY_TYPE = "ssh-ed25519"


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str = field(repr=False)  # "-----BEGIN OPENSSH PRIVATE KEY-----..."
    public: str  # "ssh-ed25519 AAAA... comment", one authorized_keys line

    @property
    def public_blob(self) -> str:
        """The base64 key blob (second field of the public line)."""
        return self.public.split()[1]

    def pkey(self) -> paramiko.Ed25519Key:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))


def generate_key_pair(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(
            encoding=serialization.Encoding.OpenSSH,
            format=serialization.PublicFormat.OpenSSH,
        )
        .decode("ascii")
    )
    return KeyPair(private_openssh=private, public=f"{public} {comment}")


@dataclass(frozen=True)
class SessionKeys:
    client: KeyPair
    host: KeyPair

    @property
    def authorized_keys(self) -> str:
        return self.client.public + "\n"


def generate_session_keys(session_id: str) -> SessionKeys:
    return SessionKeys(
        client=generate_key_pair(f"ktpy-client-{session_id}"),
        host=generate_key_pair(f"ktpy-host-{session_id}"),
    )


def host_key_matches(server_key: paramiko.PKey, pinned_public: str) -> bool:
    """Whether the key a server presented is the pinned host key (type and blob)."""
    parts = pinned_public.split()
    if len(parts) < 2 or parts[0] != KEY_TYPE:
        return False
    return server_key.get_name() == KEY_TYPE and hmac.compare_digest(
        server_key.get_base64(), parts[1]
    )


def check_host_key(server_key: paramiko.PKey, pinned_public: str, where: str) -> None:
    if not host_key_matches(server_key, pinned_public):
        raise HostKeyMismatch(
            f"the SSH server at {where} presented {server_key.get_name()} key "
            f"{server_key.fingerprint}, not this session's pinned host key"
        )


def write_private_key(directory: Path, name: str, pair: KeyPair) -> Path:
    """Write the private key to ``directory/name`` as 0600, the directory 0700.

    Only for tools that need a key file; ktpy's own SSH client uses ``pkey()``.
    The file must not already exist (O_EXCL): nothing else's key is overwritten.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} must be owned by this user and private (0700)")
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(pair.private_openssh)
    return path
