"""dnsmasq in the shadow pod: forwards to the pod's own resolver over UDP
and TCP, caches, and is reachable through the SSH tunnel."""

from __future__ import annotations

import time

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from . import _pod
from ._pod import ShadowPod
from ._servers import ANSWER

pytestmark = [pytest.mark.integration, pytest.mark.root]


def _ask(pod: ShadowPod, name: str, *, tcp: bool, qtype: str = "A") -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    deadline = time.monotonic() + 10
    while True:
        try:
            raw = query.send(pod.ns.addr, pod.dns_port, tcp=tcp, timeout=2)
            return DNSRecord.parse(raw)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_answers_from_pod_resolver_and_caches(pod: ShadowPod, tcp: bool) -> None:
    name = f"echo-{'tcp' if tcp else 'udp'}.default.svc.cluster.local."
    first = _ask(pod, name, tcp=tcp)
    assert _addresses(first) == [ANSWER]
    assert pod.dns.seen(name) == 1
    second = _ask(pod, name, tcp=tcp)
    assert _addresses(second) == [ANSWER]
    assert pod.dns.seen(name) == 1, "second query should come from dnsmasq's cache"


def test_nxdomain_passes_through(pod: ShadowPod) -> None:
    reply = _ask(pod, "nx-missing.default.svc.cluster.local.", tcp=False)
    assert reply.header.rcode == RCODE.NXDOMAIN


def test_hosts_file_not_used(pod: ShadowPod) -> None:
    # With /etc/hosts read, dnsmasq would answer localhost itself.
    reply = _ask(pod, "localhost.", tcp=False)
    assert _addresses(reply) == [ANSWER]
    assert pod.dns.seen("localhost.") == 1


def test_dns_over_the_ssh_tunnel(pod: ShadowPod) -> None:
    """How the laptop side reaches it: DNS over TCP in a direct-tcpip channel."""
    name = "tunnel.default.svc.cluster.local."
    t = _pod.login(pod)
    try:
        chan = t.open_channel("direct-tcpip", ("127.0.0.1", pod.dns_port), ("127.0.0.1", 0))
        chan.settimeout(10)
        packet = DNSRecord.question(name).pack()
        chan.sendall(len(packet).to_bytes(2, "big") + packet)
        size = int.from_bytes(chan.recv(2), "big")
        data = b""
        while len(data) < size:
            data += chan.recv(size - len(data))
        assert _addresses(DNSRecord.parse(data)) == [ANSWER]
        chan.close()
    finally:
        t.close()
    assert pod.dns.seen(name) == 1


def test_upstream_is_the_pods_resolv_conf(pod: ShadowPod) -> None:
    assert "using nameserver 127.0.0.1#53" in pod.log()
