"""Namespaces named like top-level domains (`test`, `dev`) while `ktpy connect`
runs: the laptop's own names under them resolve exactly as before connect,
`svc.test` and `svc.dev` reach their Services, and a Service named like a laptop
name is reported once (issue 11, item 1), in both resolver flavours."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.commands.test_connect_tun import _connect, _shadow_ip, _snapshot
from tests.e2e.conftest import Bed, Laptop, RunningKtpy
from tests.e2e.testbed import config

TLD_NAMESPACES = ("test", "dev")

# A namespace with a selectorless Service (an echo pod, by address), made in one
# go: nothing asks for its names before the Service exists (CoreDNS would cache
# the "no such name" for 30 s). Named afresh each time: CoreDNS also keeps the
# address of a Service deleted a moment ago.
SERVICES = """
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {svc}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {svc}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: ["{pod_ip}"]}}]
"""
# A headless Service whose endpoint is called `api`: `api.ktbed.test` is then also
# a cluster name (a laptop name too).
LAPTOP_NAMED = """
apiVersion: v1
kind: Service
metadata: {{name: ktbed}}
spec:
  clusterIP: None
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ktbed-1, labels: {{kubernetes.io/service-name: ktbed}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: ["{pod_ip}"], hostname: api}}]
"""

# Asks the laptop's first nameserver (ktpy's while connected in the plain flavour,
# systemd-resolved's stub in the other) and prints each answer without its TTLs.
ASK = r"""
import json, sys
from dnslib import QTYPE, RCODE, DNSRecord
server = next(line.split()[1] for line in open("/etc/resolv.conf")
              if line.startswith("nameserver"))
out = []
for name, qtype in json.loads(sys.argv[1]):
    reply = DNSRecord.parse(DNSRecord.question(name, qtype).send(server, 53, timeout=5))
    answers = sorted(f"{rr.rname} {QTYPE[rr.rtype]} {rr.rdata}" for rr in reply.rr)
    out.append([name, qtype, RCODE[reply.header.rcode], answers])
print(json.dumps(out))
"""
LAPTOP_QUESTIONS = [
    (f"www.{config.TEST_DOMAIN}", "A"),
    (f"www.{config.TEST_DOMAIN}", "AAAA"),
    (f"missing.{config.TEST_DOMAIN}", "A"),
    (f"hello.{config.TEST_DOMAIN}", "TXT"),
    (f"WWW.{config.TEST_DOMAIN.upper()}.", "A"),
]


def _answers(laptop: Laptop, questions: list[tuple[str, str]]) -> list[list[object]]:
    out = laptop.run(sys.executable, "-c", ASK, json.dumps(questions)).stdout
    answers: list[list[object]] = json.loads(out)
    return answers


def _host(laptop: Laptop, name: str, within: float = 0.0) -> list[str]:
    """getent's addresses for ``name`` (retried for ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        out = laptop.run("getent", "ahostsv4", name, check=False).stdout
        found = sorted({line.split()[0] for line in out.splitlines() if line.strip()})
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _gone(bed: Bed, *namespaces: str) -> None:
    bed.kubectl("delete", "namespace", *namespaces, "--ignore-not-found", "--wait=true",
                timeout=120)  # fmt: skip


@pytest.fixture
def tld_namespaces(bed: Bed) -> Iterator[None]:
    """`test` and `dev` do not exist before the test and are deleted after it: other
    suites on the bed must not meet them."""
    _gone(bed, *TLD_NAMESPACES)
    yield
    bed.kubectl("delete", "namespace", *TLD_NAMESPACES, "--ignore-not-found", "--wait=false")


@contextlib.contextmanager
def search_domain(laptop: Laptop) -> Iterator[None]:
    """The laptop's own search domain is ktbed.test (taken away again afterwards)."""
    if laptop.resolver == "resolved":
        laptop.run("resolvectl", "domain", "eth0", config.TEST_DOMAIN)
        try:
            yield
        finally:
            laptop.run("resolvectl", "revert", "eth0")
    else:
        original = laptop.run("cat", "/etc/resolv.conf").stdout
        laptop.run("sh", "-c", f"echo 'search {config.TEST_DOMAIN}' >> /etc/resolv.conf")
        try:
            yield
        finally:
            laptop.run("sh", "-c", 'printf %s "$1" > /etc/resolv.conf', "sh", original)


@pytest.mark.parametrize("laptop", ["plain", "resolved"], indirect=True)
def test_laptop_names_under_namespace_named_domains_stay_the_laptops(
    bed: Bed, echo: str, laptop: Laptop, tld_namespaces: None
) -> None:
    ns = echo
    svc = f"web-{secrets.token_hex(2)}"
    pod_ip = bed.get_json("-n", ns, "pods", "-l", "app=echo")["items"][0]["status"]["podIP"]
    api = (f"api.{config.TEST_DOMAIN}", "A")
    expected = _answers(laptop, [*LAPTOP_QUESTIONS, api])
    assert expected[0][2:] == ["NOERROR", [f"www.{config.TEST_DOMAIN}. A {config.NODE_IP}"]]
    assert expected[2][2] == "NXDOMAIN"

    bed.kubectl("apply", "-f", "-", input=SERVICES.format(ns="test", svc=svc, pod_ip=pod_ip))
    bed.apply(LAPTOP_NAMED.format(pod_ip=pod_ip), "test")
    before = _snapshot(laptop)
    session = _connect(laptop, ns)
    try:
        shadow = _shadow_ip(bed, ns, session)
        # A namespace made after connect: its names resolve within 5 s (the
        # resolved flavour makes it a routing domain of the TUN link).
        bed.kubectl("apply", "-f", "-", input=SERVICES.format(ns="dev", svc=svc, pod_ip=pod_ip))
        made = time.monotonic()
        assert _host(laptop, f"{svc}.dev", within=5) != []
        print(f"{svc}.dev resolved {time.monotonic() - made:.1f}s after its namespace was made")
        if laptop.resolver == "resolved":
            assert "~dev" in laptop.run("resolvectl", "domain").stdout.split()
        for service in (f"{svc}.test", f"{svc}.dev"):
            # kube-proxy may take a moment over a Service made a moment ago.
            deadline = time.monotonic() + 10
            while (got := laptop.run("curl", "-sf", "--max-time", "5", f"http://{service}/",
                                     check=False)).returncode != 0:  # fmt: skip
                assert time.monotonic() < deadline, (service, got)
                time.sleep(0.3)
            assert json.loads(got.stdout)["client"].rsplit(":", 1)[0] == shadow, service

        # The laptop's own names, answer by answer, as before connect...
        assert _answers(laptop, LAPTOP_QUESTIONS) == expected[:-1]
        assert _host(laptop, f"www.{config.TEST_DOMAIN}") == [config.NODE_IP]
        # ... but for the one the cluster has too: an echo pod's address (maybe one
        # of an earlier run: CoreDNS caches for 30 s).
        for _ in range(2):
            taken = _answers(laptop, [api, (api[0], "AAAA")])
            assert taken[1][2:] == ["NOERROR", []]
            assert taken[0][2] == "NOERROR"
            (answer,) = taken[0][3]
            owner, address = str(answer).rsplit(" ", 1)
            assert owner == f"api.{config.TEST_DOMAIN}. A"
            assert ipaddress.ip_address(address) in ipaddress.ip_network(config.CLUSTER_CIDR)
        session.wait_for(f"DNS: api.{config.TEST_DOMAIN} ", timeout=5)
    finally:
        assert session.stop(signal.SIGINT) == 130
    # Each name the cluster took over is reported once, however often it was asked.
    reported = [line.split()[1] for line in session.output + _rest(session)
                if line.startswith("DNS: ")]  # fmt: skip
    assert sorted(reported) == sorted([api[0], f"{svc}.dev", f"{svc}.test"])
    assert session.line_with(f"DNS: api.{config.TEST_DOMAIN} ") == (
        f"DNS: api.{config.TEST_DOMAIN} is answered by the cluster "
        f"(api.ktbed.test.svc.{config.CLUSTER_DOMAIN}) while connected, not by this "
        "machine's resolvers"
    )
    assert _snapshot(laptop) == before

    # The laptop's search domain: names under it stay the laptop's, even the one
    # the cluster has, and a short name finds them as before.
    with search_domain(laptop):
        assert _host(laptop, "www") == [config.NODE_IP]
        session = _connect(laptop, ns)
        try:
            assert _host(laptop, "www") == [config.NODE_IP]
            assert _answers(laptop, [*LAPTOP_QUESTIONS, api]) == expected
        finally:
            assert session.stop(signal.SIGINT) == 130


def _rest(session: RunningKtpy) -> list[str]:
    """Lines printed after those the test waited for, once the process is gone."""
    session.all_errors()  # stdout is read to the end by then, or very nearly
    time.sleep(0.2)
    rest: list[str] = []
    while not session.lines.empty():
        rest.append(session.lines.get())
    return rest
