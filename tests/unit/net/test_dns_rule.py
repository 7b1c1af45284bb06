"""The DNS rule for namespace-shaped names, over a table of names: the cluster is
asked first; a name it does not have gets the laptop's resolvers' answer, byte
for byte; a name it has is the cluster's and is reported once. DnsCore is
driven to the end with a scripted cluster and a scripted laptop resolver."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, DNSHeader, DNSQuestion, DNSRecord

from ktpy.net.dns import (
    AskCluster,
    AskUpstream,
    ClusterAnswered,
    ClusterFailed,
    ClusterNames,
    Collision,
    DnsAction,
    DnsCore,
    Ignore,
    Send,
    UpstreamAnswered,
)

# Namespaces named like top-level domains, as clusters often have them.
NAMES = ClusterNames(
    domain="cluster.local",
    namespace="default",
    namespaces=frozenset({"dev", "test", "app", "team"}),
    services=frozenset({"echo"}),
    cidrs=(ipaddress.ip_network("10.96.0.0/16"),),
    search=("corp.dev",),
)
CLUSTER_SOA = RR(
    "cluster.local.",
    QTYPE.SOA,
    ttl=30,
    rdata=SOA("ns.dns.cluster.local.", "hostmaster.cluster.local.", (1, 7200, 1800, 86400, 5)),
)
# What the cluster has: Services web.dev and echo.default, a headless pod.
CLUSTER = {
    "web.dev.svc.cluster.local.": ["A 10.96.3.3"],
    "echo.default.svc.cluster.local.": ["A 10.96.7.7"],
    "www.ktbed.app.svc.cluster.local.": ["A 10.244.0.9"],
    "_https._tcp.web.dev.svc.cluster.local.": ["SRV 0 100 443 web.dev.svc.cluster.local."],
}
# What the laptop's own resolver has.
LAPTOP = {
    "pkg.go.dev.": ["A 192.0.2.10", "AAAA 2001:db8::10"],
    "go.dev.": ["A 192.0.2.11", "AAAA 2001:db8::11"],
    "web.dev.": ["A 192.0.2.12"],
    "www.ktbed.test.": ["A 10.250.0.1"],
    "host.corp.dev.": ["A 192.0.2.13"],
    "app.": ["A 192.0.2.14"],
}
LAPTOP_SOA = RR("test.", QTYPE.SOA, ttl=60, rdata=SOA("ns.test.", "admin.test.", (1, 2, 3, 4, 60)))


def zone_reply(ask: bytes, zone: dict[str, list[str]], soa: RR, *, aa: int) -> bytes:
    """What a resolver holding ``zone`` says: records, NODATA or NXDOMAIN (with SOA)."""
    query = DNSRecord.parse(ask)
    reply = query.reply(aa=aa)
    name = str(query.q.qname).lower()
    held = zone.get(name)
    if held is None:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(soa)
    else:
        for record in held:
            rr = RR.fromZone(f"{query.q.qname} 30 {record}")[0]
            if rr.rtype == query.q.qtype:
                reply.add_answer(rr)
        if not reply.rr:
            reply.add_auth(soa)
    wire: bytes = reply.pack()
    return wire


@dataclass
class Outcome:
    wire: bytes
    source: str  # "cluster" or "laptop"
    cluster_asked: list[tuple[str, str]] = field(default_factory=list)
    laptop_asked: list[bytes] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)

    @property
    def reply(self) -> DNSRecord:
        return DNSRecord.parse(self.wire)


def resolve(core: DnsCore, wire: bytes, now: float = 0.0) -> Outcome:
    """Carry out every action until the client has its reply."""
    outcome = Outcome(b"", "")
    todo: list[DnsAction] = core.receive(wire, now, udp=True)
    source = "cluster"
    while todo:
        action = todo.pop(0)
        match action:
            case Send(reply):
                outcome.wire, outcome.source = reply, source
            case Collision():
                outcome.collisions.append(action)
            case AskCluster(ask, pending):
                question = DNSRecord.parse(ask).q
                outcome.cluster_asked.append((str(question.qname), QTYPE[question.qtype]))
                answer = zone_reply(ask, CLUSTER, CLUSTER_SOA, aa=1)
                todo += core.handle(ClusterAnswered(pending, answer), now)
            case AskUpstream(ask, pending):
                outcome.laptop_asked.append(ask)
                source = "laptop"
                todo += core.handle(
                    UpstreamAnswered(pending, zone_reply(ask, LAPTOP, LAPTOP_SOA, aa=0)), now
                )
            case Ignore():
                pass
    assert outcome.wire, "no reply"
    return outcome


def query(name: str, qtype: str = "A", qid: int = 7) -> bytes:
    wire: bytes = DNSRecord(
        DNSHeader(id=qid, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype))
    ).pack()
    return wire


def before_connect(wire: bytes) -> bytes:
    """What the laptop's resolver says without ktpy."""
    return zone_reply(wire, LAPTOP, LAPTOP_SOA, aa=0)


# name, type, where the answer comes from, how many cluster questions, collision
TABLE = [
    # Public names under a namespace-named TLD: the laptop's answer.
    ("pkg.go.dev", "A", "laptop", 1, None),
    ("pkg.go.dev", "AAAA", "laptop", 1, None),
    ("go.dev", "AAAA", "laptop", 1, None),
    ("go.dev", "HTTPS", "laptop", 1, None),
    ("www.ktbed.test", "A", "laptop", 1, None),
    ("www.ktbed.test", "AAAA", "laptop", 1, None),
    ("missing.ktbed.test", "A", "laptop", 1, None),
    ("missing.dev.svc", "A", "laptop", 1, None),
    # Trailing dot and upper case: the same, the client's spelling kept.
    ("WWW.KtBed.Test.", "A", "laptop", 1, None),
    ("PKG.go.DEV.", "AAAA", "laptop", 1, None),
    # A name the cluster has: the cluster's, whatever the laptop has.
    ("web.dev", "A", "cluster", 1, "web.dev"),
    ("Web.DEV.", "A", "cluster", 1, "web.dev"),
    ("web.dev.svc", "A", "cluster", 1, "web.dev.svc"),
    ("web.dev", "AAAA", "cluster", 1, "web.dev"),  # NODATA made up: an IPv4 cluster
    ("web.dev", "TXT", "cluster", 2, "web.dev"),  # exists? then the type
    ("_https._tcp.web.dev", "SRV", "cluster", 2, "web.dev"),
    ("www.ktbed.app", "A", "cluster", 1, "www.ktbed.app"),  # a pod
    ("echo.default", "A", "cluster", 1, "echo.default"),
    # The laptop's search domain: never the cluster's, though `dev` is a namespace.
    ("host.corp.dev", "A", "laptop", 0, None),
    ("other.corp.dev", "A", "laptop", 0, None),
    # A namespace alone is no Service: the laptop's.
    ("app", "A", "laptop", 0, None),
    # The cluster's alone, as before: the short Service name and the cluster domain.
    ("echo", "A", "cluster", 1, None),
    ("missing.default.svc.cluster.local", "A", "cluster", 1, None),
]


@pytest.mark.parametrize(("name", "qtype", "source", "asked", "collision"), TABLE)
def test_the_dns_rule(
    name: str, qtype: str, source: str, asked: int, collision: str | None
) -> None:
    wire = query(name, qtype)
    outcome = resolve(DnsCore(NAMES), wire)
    assert outcome.source == source
    assert len(outcome.cluster_asked) == asked
    assert [c.name for c in outcome.collisions] == ([collision] if collision else [])
    reply = outcome.reply
    assert reply.header.id == 7
    assert reply.q.qname.label == DNSRecord.parse(wire).q.qname.label, "the client's spelling"
    if source == "laptop":
        # Exactly what the laptop's resolver says, asked exactly as the client asked.
        assert outcome.laptop_asked == [wire]
        assert outcome.wire == before_connect(wire)
    else:
        assert outcome.laptop_asked == []


def test_a_public_name_costs_one_cluster_question_per_negative_ttl() -> None:
    core = DnsCore(NAMES)
    first = resolve(core, query("pkg.go.dev"), 0.0)
    assert first.cluster_asked == [("pkg.go.dev.svc.cluster.local.", "A")]
    # Every type and spelling within the SOA's 5 s goes straight to the laptop.
    for qtype in ("A", "AAAA", "HTTPS", "MX"):
        later = resolve(core, query("PKG.Go.Dev.", qtype), 4.9)
        assert later.cluster_asked == []
        assert later.source == "laptop"
    assert resolve(core, query("pkg.go.dev"), 5.0).cluster_asked != []
    stats = core.stats()
    assert stats.fallbacks == 6
    assert stats.upstream == 0, "counted as cluster-first names, not as other names"


def test_each_collision_is_reported_once() -> None:
    core = DnsCore(NAMES)
    reported = [
        c.name
        for qtype in ("A", "AAAA", "TXT", "A")
        for c in resolve(core, query("web.dev", qtype), 0.0).collisions
    ]
    assert reported == ["web.dev"]
    # Even after the cache forgot the name.
    assert resolve(core, query("web.dev"), 100.0).collisions == []
    assert [c.cluster_name for c in resolve(core, query("www.ktbed.app"), 0.0).collisions] == [
        "www.ktbed.app.svc.cluster.local."
    ]


def test_a_service_made_later_wins_once_the_watch_says_so() -> None:
    core = DnsCore(NAMES)
    assert resolve(core, query("api.dev"), 0.0).source == "laptop"
    CLUSTER["api.dev.svc.cluster.local."] = ["A 10.96.4.4"]
    try:
        assert resolve(core, query("api.dev"), 1.0).source == "laptop", "cached negative"
        core.update_names(NAMES.with_known(namespaces=NAMES.namespaces | {"prod"}))
        assert resolve(core, query("api.dev"), 1.0).source == "cluster"
    finally:
        del CLUSTER["api.dev.svc.cluster.local."]


def test_a_cluster_failure_is_servfail_not_the_laptops_answer() -> None:
    """Only a name the cluster does not have goes on: a failing tunnel must not
    send a Service name to the laptop's resolvers."""
    core = DnsCore(NAMES)
    (asked,) = core.receive(query("web.dev"), 0.0, udp=True)
    assert isinstance(asked, AskCluster)
    (sent,) = core.handle(ClusterFailed(asked.pending), 0.0)
    assert isinstance(sent, Send)
    assert DNSRecord.parse(sent.wire).header.rcode == RCODE.SERVFAIL


def test_an_ipv6_only_cluster_is_asked_for_aaaa() -> None:
    names = ClusterNames(
        "cluster.local",
        "default",
        namespaces=frozenset({"dev"}),
        cidrs=(ipaddress.ip_network("fd00:10:96::/112"),),
        ipv6=True,
    )
    (asked,) = DnsCore(names).receive(query("web.dev"), 0.0, udp=True)
    assert isinstance(asked, AskCluster)
    assert QTYPE[DNSRecord.parse(asked.wire).q.qtype] == "AAAA"
