"""Run the image's real entrypoint the way a kubelet would under the
restricted Pod Security Standard, with no container runtime: a network
namespace for the pod network, private mount and PID namespaces, the rootfs
read-only with a tmpfs /tmp, a Secret-like volume, a resolv.conf that points
at the test DNS server, uid/gid 10001, no capabilities, no_new_privs."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from . import _netns
from ._servers import DnsServer

UID = GID = 10001
_BECOME = Path(__file__).with_name("_become.py")
SECRET_PATH = "etc/ktpy/secret"  # inside the rootfs

# Runs as root inside the pod's fresh mount namespace; $1 rootfs, $2 workdir,
# the rest is the command that becomes the container (_become.py: chroot,
# uid, capabilities, exec). The entrypoint runs as PID 1 of a PID namespace
# nested in one whose PID 1 is the root-run unshare: that one keeps the
# parent-death signal (the uid change clears it for the entrypoint), so if
# pytest is killed the whole pod still goes with it.
_LAUNCH = r"""
set -e
root=$1 work=$2
shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,mode=0755 tmpfs "$root/dev"
for d in null zero full random urandom tty; do
    touch "$root/dev/$d"
    mount --bind "/dev/$d" "$root/dev/$d"
done
mount --bind "$work/resolv.conf" "$root/etc/resolv.conf"
mount --bind "$work/secret" "$root/etc/ktpy/secret"
mount -o remount,bind,ro "$root/etc/ktpy/secret"
exec unshare --pid --fork --kill-child --mount-proc="$root/proc" -- "$@"
"""


@dataclass(frozen=True)
class SessionKeys:
    """What a ktpy session makes on the laptop: client and host Ed25519 pairs."""

    client: paramiko.Ed25519Key
    client_private: str  # OpenSSH private key format; never leaves the laptop
    client_line: str  # authorized_keys line
    host: paramiko.Ed25519Key
    host_private: str  # OpenSSH private key format, as the Secret carries it
    host_line: str


def _ed25519() -> tuple[paramiko.Ed25519Key, str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(private)), private, public


def make_keys() -> SessionKeys:
    client, client_private, client_line = _ed25519()
    host, host_private, host_line = _ed25519()
    return SessionKeys(
        client, client_private, client_line + " ktpy-client", host, host_private, host_line
    )


def ecdsa_key() -> tuple[paramiko.ECDSAKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return paramiko.ECDSAKey(file_obj=io.StringIO(private)), public


# What ktpy's manifest asks for: defaultMode 0440 with fsGroup 10001, so
# kubelet makes the files root:10001 0440 (too open for sshd's host key).
SECRET_MODE = 0o440
SECRET_GID = GID


def _write_secret(directory: Path, files: dict[str, str], mode: int, gid: int) -> None:
    """Lay the files out like a kubelet Secret volume: root-owned, reached
    through the ..data symlink."""
    directory.mkdir(mode=0o755)
    _write_stamp(directory, files, mode, gid)


def _write_stamp(directory: Path, files: dict[str, str], mode: int, gid: int) -> None:
    """A new timestamped directory, then ..data swapped to it in one rename:
    what a kubelet does when the Secret changes."""
    stamp = Path(tempfile.mkdtemp(prefix="..2026_01_01_00_00_00.", dir=directory))
    stamp.chmod(0o755)
    for name, text in files.items():
        (stamp / name).write_text(text)
        os.chown(stamp / name, 0, gid)
        (stamp / name).chmod(mode)
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    old = (directory / "..data").resolve() if (directory / "..data").is_symlink() else None
    (directory / "..data_tmp").symlink_to(stamp.name)
    (directory / "..data_tmp").rename(directory / "..data")
    for entry in directory.iterdir():
        if entry.is_symlink() and not entry.exists():
            entry.unlink()  # a key the Secret no longer has
    if old is not None:
        shutil.rmtree(old)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    name: str
    status: dict[str, str]

    @property
    def uids(self) -> list[int]:
        return [int(x) for x in self.status["Uid"].split()]

    @property
    def gids(self) -> list[int]:
        return [int(x) for x in self.status["Gid"].split()]


@dataclass
class ShadowPod:
    ns: _netns.Netns
    workdir: Path
    keys: SessionKeys
    proc: subprocess.Popen[bytes]
    ssh_port: int
    dns_port: int
    dns: DnsServer
    argv: list[str] = field(default_factory=list)
    secret_mode: int = SECRET_MODE
    secret_gid: int = SECRET_GID

    def log(self) -> str:
        return (self.workdir / "pod.log").read_text(errors="replace")

    def processes(self) -> list[ProcInfo]:
        """The processes inside the pod's PID namespace (not the root-run launcher)."""
        found = []
        for pid in self.ns.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
                # host, launcher and pod PID namespaces: only the pod's own
                if len(status.get("NSpid", "").split()) == 3:
                    found.append(ProcInfo(pid, status["Name"], status))
        return found

    def pid_of(self, name: str) -> int:
        """Host pid of the first process called name; the entrypoint is "init" (pid 1 inside)."""
        for p in self.processes():
            if name == "init" and p.status["NSpid"].split()[-1] == "1":
                return p.pid
            if p.name == name:
                return p.pid
        raise LookupError(f"no {name} in the pod: {[p.name for p in self.processes()]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Like the tcpSocket readiness probe on the ssh port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pod exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.ns.addr, self.ssh_port), timeout=1).close()
                return
            time.sleep(0.1)
        raise TimeoutError(f"ssh port not ready after {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def update_secret(self, files: dict[str, str]) -> None:
        """Change the Secret while the pod runs, as the kubelet does."""
        _write_stamp(self.workdir / "secret", files, self.secret_mode, self.secret_gid)

    def restart(self, wait: bool = True) -> None:
        """The container restarted in the same pod: SIGTERM, then the
        entrypoint again, in the same network namespace and Secret volume."""
        if self.proc.poll() is None:
            os.kill(self.pid_of("init"), signal.SIGTERM)
            self.proc.wait(15)
        self.proc = _launch(self.argv, self.workdir)
        if wait:
            self.wait_ready()

    def stop(self) -> None:
        if self.proc.poll() is None:
            # unshare --kill-child takes PID 1 of the pod, and with it the
            # whole PID namespace, down when it dies.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.ns.delete()
        self.dns.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    rootfs: Path,
    image_config: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    keys: SessionKeys | None = None,
    extra_authorized: str = "",
    secret: dict[str, str] | None = None,
    secret_mode: int = SECRET_MODE,
    secret_gid: int = SECRET_GID,
    user: str | None = None,
    wait: bool = True,
) -> ShadowPod:
    """Start a pod; secret replaces the Secret's files (default: the contract's three)."""
    keys = keys or make_keys()
    cfg = image_config["config"]
    image_env = dict(e.split("=", 1) for e in cfg.get("Env", []))
    full_env = {**image_env, "KTPY_ROLE": "connect", "HOSTNAME": "shadow", **(env or {})}
    ns = _netns.create({"net.ipv4.ip_unprivileged_port_start": "0"})
    workdir = Path(tempfile.mkdtemp(prefix="ktpy-shimg-"))
    dns: DnsServer | None = None
    try:
        workdir.chmod(0o755)
        # The pod's own resolver (kubelet writes it); dnsmasq must forward here.
        (workdir / "resolv.conf").write_text(
            "search default.svc.cluster.local svc.cluster.local cluster.local\n"
            "nameserver 127.0.0.1\noptions ndots:5\n"
        )
        if secret is None:
            secret = {
                "authorized_keys": keys.client_line + "\n" + extra_authorized,
                "ssh_host_ed25519_key": keys.host_private,
                "ssh_host_ed25519_key.pub": keys.host_line + "\n",
            }
        _write_secret(workdir / "secret", secret, secret_mode, secret_gid)
        dns = DnsServer(
            udp=_netns.listen_in(ns.name, "127.0.0.1", 53, socket.SOCK_DGRAM),
            tcp=_netns.listen_in(ns.name, "127.0.0.1", 53),
        )
        image_user = cfg.get("User", "")
        assert image_user.isdigit(), f"image User must be numeric for runAsNonRoot: {image_user!r}"
        user = user or image_user  # like the pod's runAsUser overriding the image
        argv = [
            "ip", "netns", "exec", ns.name,
            "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "--", "sh", "-c", _LAUNCH, "sh", str(rootfs), str(workdir),
            sys.executable, str(_BECOME), str(rootfs), user, str(GID),
            cfg.get("WorkingDir") or "/",
            *(f"{k}={v}" for k, v in full_env.items()),
            "--", *cfg.get("Entrypoint", []), *(cfg.get("Cmd") or []),
        ]  # fmt: skip
        proc = _launch(argv, workdir)
        pod = ShadowPod(
            ns=ns,
            workdir=workdir,
            keys=keys,
            proc=proc,
            ssh_port=_port(full_env.get("KTPY_SSH_PORT", "2222")),
            dns_port=_port(full_env.get("KTPY_DNS_PORT", "5353")),
            dns=dns,
            argv=argv,
            secret_mode=secret_mode,
            secret_gid=secret_gid,
        )
    except BaseException:
        ns.delete()
        if dns is not None:
            dns.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if wait:
        try:
            pod.wait_ready()
        except BaseException:
            pod.stop()
            raise
    return pod


def _launch(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    # Appended: a restarted container's log follows the one before it.
    with (workdir / "pod.log").open("ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip


def _die_with_parent() -> None:
    # If pytest is killed, unshare gets SIGKILL and --kill-child takes the
    # pod down; the namespace itself goes at the next run (remove_stale).
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _port(value: str) -> int:
    return int(value) if value.isdigit() else 0  # 0: a bad value the pod should refuse


def prepare_rootfs(rootfs: Path) -> None:
    """Mount points a runtime would create: the Secret volume's directory."""
    (rootfs / SECRET_PATH).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/resolv.conf").touch(exist_ok=True)


# --- SSH, the way ktpy's client is meant to use it -----------------------


class HostKeyMismatch(Exception):
    pass


def transport(
    pod: ShadowPod,
    *,
    ciphers: tuple[str, ...] | None = None,
    kex: tuple[str, ...] | None = None,
    macs: tuple[str, ...] | None = None,
    disabled: dict[str, list[str]] | None = None,
    port: int | None = None,
) -> paramiko.Transport:
    sock = socket.create_connection((pod.ns.addr, port or pod.ssh_port), timeout=10)
    t = paramiko.Transport(sock, disabled_algorithms=disabled)
    opts = t.get_security_options()
    if ciphers:
        opts.ciphers = ciphers
    if kex:
        opts.kex = kex
    if macs:
        opts.digests = macs
    try:
        t.start_client(timeout=10)
    except BaseException:
        t.close()
        raise
    return t


def _check_pin(t: paramiko.Transport, expected: paramiko.PKey) -> None:
    got = t.get_remote_server_key()
    if (got.get_name(), got.asbytes()) != ("ssh-ed25519", expected.asbytes()):
        raise HostKeyMismatch(got.get_name())


def login(
    pod: ShadowPod,
    key: paramiko.PKey | None = None,
    user: str = "kt",
    **kw: Any,
) -> paramiko.Transport:
    """Pinned host key, then public-key auth; no known_hosts, no TOFU."""
    t = transport(pod, **kw)
    try:
        _check_pin(t, pod.keys.host)
        t.auth_publickey(user, key or pod.keys.client)
    except BaseException:
        t.close()
        raise
    return t


def exchange(chan: paramiko.Channel | socket.socket, data: bytes, timeout: float = 10.0) -> bytes:
    """Send data, then read until as many bytes came back (echo-style servers)."""
    chan.settimeout(timeout)
    chan.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = chan.recv(65536)
        if not chunk:
            break
        got += chunk
    return got
