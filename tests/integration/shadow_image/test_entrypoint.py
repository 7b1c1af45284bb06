"""The entrypoint as PID 1: dies with either daemon, stops both on SIGTERM,
refuses to start without the Secret, and honours the port variables."""

from __future__ import annotations

import os
import signal

import pytest
from dnslib import QTYPE, DNSRecord
from paramiko.ssh_exception import AuthenticationException

from . import _pod
from .conftest import StartPod

pytestmark = [pytest.mark.integration, pytest.mark.root]


def _main_sshd(pod: _pod.ShadowPod) -> int:
    """The listening sshd: the one whose parent is the entrypoint."""
    init = pod.pid_of("init")
    for p in pod.processes():
        if p.name == "sshd" and int(p.status["PPid"]) == init:
            return p.pid
    raise LookupError("no listening sshd")


def test_exits_nonzero_when_dnsmasq_dies(start_pod: StartPod) -> None:
    pod = start_pod()
    os.kill(pod.pid_of("dnsmasq"), signal.SIGKILL)
    rc = pod.wait_exit()
    assert rc == 128 + signal.SIGKILL, pod.log()
    assert "dnsmasq exited with status 137" in pod.log()
    assert pod.processes() == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_exits_nonzero_when_sshd_dies(start_pod: StartPod, sig: signal.Signals) -> None:
    # Even a clean exit of sshd (SIGTERM) must fail the container.
    pod = start_pod()
    os.kill(_main_sshd(pod), sig)
    assert pod.wait_exit() != 0, pod.log()
    assert "sshd exited with status" in pod.log()
    assert pod.processes() == []


def test_sigterm_stops_both_and_exits_zero(start_pod: StartPod) -> None:
    pod = start_pod()
    os.kill(pod.pid_of("init"), signal.SIGTERM)
    assert pod.wait_exit(timeout=10) == 0, pod.log()
    assert "stopped on request" in pod.log()
    assert pod.processes() == []


@pytest.mark.parametrize(
    "missing", ["authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
)
def test_refuses_to_start_without_the_secret(start_pod: StartPod, missing: str) -> None:
    keys = _pod.make_keys()
    files = {
        "authorized_keys": keys.client_line + "\n",
        "ssh_host_ed25519_key": keys.host_private,
        "ssh_host_ed25519_key.pub": keys.host_line + "\n",
    }
    del files[missing]
    pod = start_pod(keys=keys, secret=files, wait=False)
    assert pod.wait_exit() == 1
    assert f"cannot read /etc/ktpy/secret/{missing}" in pod.log()


def test_refuses_to_run_as_root(start_pod: StartPod) -> None:
    pod = start_pod(user="0", wait=False)
    assert pod.wait_exit() == 1
    assert "running as root" in pod.log()


def test_refuses_a_bad_port(start_pod: StartPod) -> None:
    pod = start_pod(env={"KTPY_SSH_PORT": "ssh"}, wait=False)
    assert pod.wait_exit() == 1
    assert "ports must be numbers" in pod.log()


def test_port_variables_and_ed25519_only_client_keys(start_pod: StartPod) -> None:
    """sshd on 22 (a low port, allowed by the pod sysctl alone); an ECDSA key
    in authorized_keys is still refused (PubkeyAcceptedAlgorithms)."""
    ecdsa, ecdsa_line = _pod.ecdsa_key()
    pod = start_pod(env={"KTPY_SSH_PORT": "22", "KTPY_DNS_PORT": "5300"},
                    extra_authorized=ecdsa_line + "\n")  # fmt: skip
    t = _pod.login(pod)
    assert t.is_authenticated()
    t.close()
    with pytest.raises(AuthenticationException):
        _pod.login(pod, key=ecdsa)
    reply = DNSRecord.parse(
        DNSRecord.question("p.cluster.local").send(pod.ns.addr, 5300, timeout=5)
    )
    assert [str(r.rdata) for r in reply.rr if r.rtype == QTYPE.A] == ["10.96.7.7"]
    assert "ssh_port=22 dns_port=5300" in pod.log()


@pytest.mark.parametrize(
    ("mode", "gid"),
    [(0o440, 10001), (0o444, 0), (0o644, 0)],
    ids=["0440-fsGroup", "0444", "0644"],
)
def test_secret_keys_copied_private(start_pod: StartPod, mode: int, gid: int) -> None:
    """Whatever mode the Secret volume has, sshd gets 0600 copies owned by kt."""
    pod = start_pod(secret_mode=mode, secret_gid=gid)
    t = _pod.login(pod)
    try:
        chan = t.open_session()
        chan.exec_command(
            "cd /tmp/ktpy && stat -c '%a %u %g %n' . authorized_keys ssh_host_ed25519_key*"
        )
        lines = chan.makefile("rb").read().decode().splitlines()
    finally:
        t.close()
    assert lines == [
        "700 10001 10001 .",
        "600 10001 10001 authorized_keys",
        "600 10001 10001 ssh_host_ed25519_key",
        "600 10001 10001 ssh_host_ed25519_key.pub",
    ]


def test_unreadable_secret_is_a_clear_error(start_pod: StartPod) -> None:
    pod = start_pod(secret_mode=0o400, secret_gid=0, wait=False)
    assert pod.wait_exit() == 1
    assert "cannot read /etc/ktpy/secret/authorized_keys" in pod.log()
