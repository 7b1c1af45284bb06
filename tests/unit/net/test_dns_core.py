"""DnsCore driven with scripted queries and answers: no sockets, a fake clock.
Where the whole exchange is known byte for byte, by the Playbook."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

from ktpy.net.dns import (
    MAX_NEGATIVE_TTL,
    AskCluster,
    AskUpstream,
    ClusterAnswered,
    ClusterFailed,
    ClusterNames,
    Collision,
    DnsAction,
    DnsCore,
    DnsStats,
    Ignore,
    Route,
    Send,
    UpstreamAnswered,
    UpstreamFailed,
    cache_ttl,
)
from tests.unit.playbook import Placeholder, Playbook

NAMES = ClusterNames(
    domain="cluster.local",
    namespace="default",
    namespaces=frozenset({"team"}),
    services=frozenset({"echo", "big"}),
    cidrs=(ipaddress.ip_network("10.96.0.0/16"),),
)
FQDN = "echo.default.svc.cluster.local."
SOA_RR = RR(
    "cluster.local.",
    QTYPE.SOA,
    ttl=30,
    rdata=SOA("ns.dns.cluster.local.", "hostmaster.cluster.local.", (1, 7200, 1800, 86400, 5)),
)


def query(name: str, qtype: str = "A", *, qid: int = 4321, edns: int | None = None) -> bytes:
    record = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns))
    wire: bytes = record.pack()
    return wire


def cluster_reply(
    ask: bytes,
    *zone: str,
    rcode: int = RCODE.NOERROR,
    auth: tuple[RR, ...] = (),
) -> bytes:
    """What cluster DNS says to ``ask``: records given in zone syntax."""
    reply = DNSRecord.parse(ask).reply(aa=1)
    reply.header.rcode = rcode
    for line in zone:
        reply.add_answer(*RR.fromZone(line))
    reply.add_auth(*auth)
    wire: bytes = reply.pack()
    return wire


def decide(core: DnsCore, wire: bytes, now: float, *, udp: bool) -> DnsAction:
    """The one action a query gets."""
    (action,) = core.receive(wire, now, udp=udp)
    return action


def ask_cluster(core: DnsCore, wire: bytes, now: float = 0.0, *, udp: bool = True) -> AskCluster:
    action = decide(core, wire, now, udp=udp)
    assert isinstance(action, AskCluster), action
    return action


def answer(actions: DnsAction | list[DnsAction]) -> DNSRecord:
    """The reply the client is sent."""
    if isinstance(actions, list):
        (actions,) = actions
    assert isinstance(actions, Send), actions
    return DNSRecord.parse(actions.wire)


def claimed(actions: list[DnsAction], name: str) -> DNSRecord:
    """The reply to a cluster-first name the cluster has, reported as a collision."""
    collision, sent = actions
    assert isinstance(collision, Collision), actions
    assert collision.name == name
    return answer(sent)


def records(reply: DNSRecord) -> list[tuple[str, str, int, str]]:
    return [(str(rr.rname), QTYPE[rr.rtype], rr.ttl, str(rr.rdata)) for rr in reply.rr]


def cluster_lacks(core: DnsCore, name: str) -> list[DnsAction]:
    """The cluster answers NXDOMAIN (with its SOA) for ``name``, asked at time 0."""
    asked = ask_cluster(core, query(name))
    reply = cluster_reply(asked.wire, rcode=RCODE.NXDOMAIN, auth=(SOA_RR,))
    return core.handle(ClusterAnswered(asked.pending, reply), 0.0)


# --- cluster names: rewriting both ways -------------------------------------


def test_short_name_is_expanded_and_the_answer_renamed_back() -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("Echo", qid=77))
    sent = DNSRecord.parse(asked.wire)
    assert str(sent.q.qname) == FQDN
    assert sent.q.qtype == QTYPE.A
    assert asked.pending.decision.rule == "service"

    reply = answer(
        core.handle(
            ClusterAnswered(asked.pending, cluster_reply(asked.wire, f"{FQDN} 30 A 10.96.7.7")), 0.0
        )
    )
    assert reply.header.id == 77
    assert reply.header.qr == 1
    assert reply.header.rcode == RCODE.NOERROR
    # The stub checks the question it asked, letter case included.
    assert reply.q.qname.label == (b"Echo",)
    assert records(reply) == [("Echo.", "A", 30, "10.96.7.7")]


@pytest.mark.parametrize("name", ["echo.team", "echo.team.svc", "echo.team.svc.cluster.local"])
def test_namespace_forms_ask_the_full_name(name: str) -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query(name))
    assert str(DNSRecord.parse(asked.wire).q.qname) == "echo.team.svc.cluster.local."
    actions = core.handle(
        ClusterAnswered(
            asked.pending,
            cluster_reply(asked.wire, "echo.team.svc.cluster.local. 5 A 10.96.1.1"),
        ),
        0.0,
    )
    # The short forms are also public-looking names: the user is told once.
    reply = answer(actions) if name.endswith(".local") else claimed(actions, name)
    assert records(reply) == [(name + ".", "A", 5, "10.96.1.1")]


def test_cname_chain_of_an_external_name_service() -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("ext.team"))
    wire = cluster_reply(
        asked.wire,
        "ext.team.svc.cluster.local. 5 CNAME db.example.org.",
        "db.example.org. 60 CNAME db-1.example.org.",
        "db-1.example.org. 60 A 192.0.2.10",
    )
    reply = claimed(core.handle(ClusterAnswered(asked.pending, wire), 0.0), "ext.team")
    # Only the owner the stub asked about changes; the chain after it stays.
    assert records(reply) == [
        ("ext.team.", "CNAME", 5, "db.example.org."),
        ("db.example.org.", "CNAME", 60, "db-1.example.org."),
        ("db-1.example.org.", "A", 60, "192.0.2.10"),
    ]


def test_headless_service_and_srv_records() -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("_http._tcp.echo", "SRV"))
    assert str(DNSRecord.parse(asked.wire).q.qname) == "_http._tcp." + FQDN
    wire = cluster_reply(
        asked.wire,
        f"_http._tcp.{FQDN} 5 SRV 0 50 80 a.{FQDN}",
        f"_http._tcp.{FQDN} 5 SRV 0 50 80 b.{FQDN}",
    )
    reply = answer(core.handle(ClusterAnswered(asked.pending, wire), 0.0))
    assert [r[0] for r in records(reply)] == ["_http._tcp.echo.", "_http._tcp.echo."]
    assert [str(rr.rdata.target) for rr in reply.rr] == [f"a.{FQDN}", f"b.{FQDN}"]


def test_reverse_lookup_in_a_cluster_range_goes_to_the_cluster() -> None:
    core = DnsCore(NAMES)
    name = "10.0.96.10.in-addr.arpa."
    asked = ask_cluster(core, query(name, "PTR"))
    assert str(DNSRecord.parse(asked.wire).q.qname) == name
    wire = cluster_reply(asked.wire, f"{name} 5 PTR kube-dns.kube-system.svc.cluster.local.")
    reply = answer(core.handle(ClusterAnswered(asked.pending, wire), 0.0))
    assert records(reply) == [(name, "PTR", 5, "kube-dns.kube-system.svc.cluster.local.")]

    outside = decide(core, query("1.0.168.192.in-addr.arpa", "PTR"), 0.0, udp=True)
    assert isinstance(outside, AskUpstream)


# --- everything else: untouched ----------------------------------------------


def test_other_names_go_upstream_byte_for_byte() -> None:
    wire = query("www.example.org", "AAAA", edns=1232)
    upstream_reply = DNSRecord.parse(wire).reply()
    upstream_reply.add_answer(*RR.fromZone("www.example.org. 300 AAAA 2001:db8::1"))
    raw = upstream_reply.pack()
    asked = Placeholder(AskUpstream)
    pb = Playbook(DnsCore(NAMES), now=0.0, udp=True) >> wire << asked
    assert asked().wire == wire
    assert asked().pending.decision.route is Route.UPSTREAM
    assert pb >> UpstreamAnswered(asked().pending, raw) << Send(raw)


def test_upstream_failure_is_servfail_to_the_client() -> None:
    core = DnsCore(NAMES)
    command = decide(core, query("www.example.org", qid=9), 0.0, udp=True)
    assert isinstance(command, AskUpstream)
    reply = answer(core.handle(UpstreamFailed(command.pending), 0.0))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert reply.header.id == 9
    assert str(reply.q.qname) == "www.example.org."
    assert core.stats().upstream_failures == 1


@pytest.mark.parametrize(
    "wire",
    [
        # Two questions: not what a stub sends; not ours to judge.
        DNSRecord(q=DNSQuestion("echo"), questions=[DNSQuestion("echo")]).pack(),
        # CHAOS class (version.bind).
        DNSRecord(q=DNSQuestion("version.bind", QTYPE.TXT, 3)).pack(),
        # Not a QUERY opcode.
        DNSRecord(DNSHeader(opcode=5), q=DNSQuestion("echo")).pack(),
        # Garbage after a valid header.
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
    ],
    ids=["two-questions", "chaos", "update", "garbage"],
)
def test_unusual_queries_go_upstream_untouched(wire: bytes) -> None:
    core = DnsCore(NAMES)
    command = decide(core, wire, 0.0, udp=True)
    assert isinstance(command, AskUpstream)
    assert command.wire == wire


def test_unparseable_query_without_upstream_answer_is_dropped() -> None:
    asked = Placeholder(AskUpstream)
    pb = Playbook(DnsCore(NAMES), now=0.0, udp=True)
    pb >> b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\xff" << asked
    assert pb >> UpstreamFailed(asked().pending) << Placeholder(Ignore)


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x00" * 11, DNSRecord.question("echo").reply().pack()],
    ids=["empty", "short", "a-response"],
)
def test_ignored(wire: bytes) -> None:
    assert Playbook(DnsCore(NAMES), now=0.0, udp=True) >> wire << Placeholder(Ignore)


# --- AAAA in an IPv4-only cluster ---------------------------------------------


@pytest.mark.parametrize("qtype", ["AAAA", "HTTPS", "SVCB"])
@pytest.mark.parametrize("name", ["echo", FQDN])
def test_no_ipv6_types_answered_empty_at_once(name: str, qtype: str) -> None:
    core = DnsCore(NAMES)
    reply = answer(decide(core, query(name, qtype, qid=5), 0.0, udp=True))
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.header.id == 5
    assert reply.rr == []
    assert str(reply.q.qname) == (name if name.endswith(".") else name + ".")
    assert reply.q.qtype == getattr(QTYPE, qtype)
    assert core.stats().synthesized == 1
    assert core.stats().cluster_asked == 0


def test_aaaa_of_a_name_known_missing_is_nxdomain() -> None:
    core = DnsCore(NAMES)
    gone = "gone.team.svc.cluster.local"
    cluster_lacks(core, gone)
    reply = answer(decide(core, query(gone, "AAAA"), 1.0, udp=True))
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.rr == []
    assert [QTYPE[rr.rtype] for rr in reply.auth] == ["SOA"]


def test_aaaa_is_asked_in_a_dual_stack_cluster() -> None:
    core = DnsCore(replace(NAMES, ipv6=True))
    asked = ask_cluster(core, query("echo", "AAAA"))
    assert DNSRecord.parse(asked.wire).q.qtype == QTYPE.AAAA


@pytest.mark.parametrize("qtype", ["TXT", "SRV", "PTR", "CNAME", "A", "ANY", "SOA"])
def test_other_types_are_asked(qtype: str) -> None:
    ask_cluster(DnsCore(NAMES), query("echo", qtype))


# --- cache ------------------------------------------------------------------


def _answer_echo(core: DnsCore, name: str = "echo", now: float = 0.0, ttl: int = 30) -> None:
    asked = ask_cluster(core, query(name), now)
    core.handle(
        ClusterAnswered(asked.pending, cluster_reply(asked.wire, f"{FQDN} {ttl} A 10.96.7.7")), now
    )


def test_answers_are_cached_by_their_ttl() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core, now=100.0, ttl=30)

    hit = answer(decide(core, query("echo", qid=8), 112.4, udp=True))
    assert hit.header.id == 8
    assert records(hit) == [("echo.", "A", 18, "10.96.7.7")], "TTL counts down"
    assert core.stats().cache_hits == 1

    # The same cluster name in another form shares the entry.
    other_form = answer(decide(core, query("ECHO.default"), 120.0, udp=True))
    assert records(other_form) == [("ECHO.default.", "A", 10, "10.96.7.7")]

    # Expired: asked again.
    ask_cluster(core, query("echo"), 130.0)
    assert core.stats().cluster_asked == 2


def test_cache_key_has_the_type() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core)
    ask_cluster(core, query("echo", "TXT"), 1.0)


def test_ttl_zero_is_not_cached() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core, ttl=0)
    ask_cluster(core, query("echo"), 0.0)


def test_nxdomain_passes_through_and_is_cached_by_the_soa_minimum() -> None:
    """For a name under the cluster domain; a cluster-first name goes on to the
    laptop's resolvers (test_dns_rule)."""
    core = DnsCore(NAMES)
    gone = "gone.team.svc.cluster.local"
    asked = ask_cluster(core, query(gone, qid=3), 0.0)
    reply = answer(
        core.handle(
            ClusterAnswered(
                asked.pending, cluster_reply(asked.wire, rcode=RCODE.NXDOMAIN, auth=(SOA_RR,))
            ),
            0.0,
        )
    )
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.header.id == 3
    assert str(reply.q.qname) == gone + "."
    assert str(reply.auth[0].rname) == "cluster.local."
    assert core.stats().nxdomain == 1

    # SOA minimum is 5 s: cached for 5 s, then asked again.
    assert answer(decide(core, query(gone), 4.9, udp=True)).header.rcode == (RCODE.NXDOMAIN)
    ask_cluster(core, query(gone), 5.0)


def test_nxdomain_without_soa_is_not_cached() -> None:
    core = DnsCore(NAMES)
    gone = "gone.team.svc.cluster.local"
    asked = ask_cluster(core, query(gone))
    reply = answer(
        core.handle(
            ClusterAnswered(asked.pending, cluster_reply(asked.wire, rcode=RCODE.NXDOMAIN)), 0.0
        )
    )
    assert reply.header.rcode == RCODE.NXDOMAIN
    ask_cluster(core, query(gone), 0.1)


@pytest.mark.parametrize("rcode", [RCODE.SERVFAIL, RCODE.REFUSED])
def test_failures_pass_through_and_are_not_cached(rcode: int) -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("echo"))
    wire = cluster_reply(asked.wire, rcode=rcode, auth=(SOA_RR,))
    assert answer(core.handle(ClusterAnswered(asked.pending, wire), 0.0)).header.rcode == rcode
    ask_cluster(core, query("echo"), 0.1)


def test_cluster_unreachable_is_servfail_and_not_cached() -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("echo", qid=11))
    reply = answer(core.handle(ClusterFailed(asked.pending), 0.0))
    assert reply.header.rcode == RCODE.SERVFAIL
    assert reply.header.id == 11
    assert str(reply.q.qname) == "echo."
    ask_cluster(core, query("echo"), 0.1)
    assert core.stats().cluster_failures == 1


@pytest.mark.parametrize(
    "bad",
    [
        b"not dns",
        DNSRecord.question("other.default.svc.cluster.local.").reply().pack(),
        DNSRecord.question(FQDN, "TXT").reply().pack(),
        DNSRecord.question(FQDN).pack(),  # a query, not an answer
    ],
    ids=["garbage", "other-name", "other-type", "not-a-response"],
)
def test_a_reply_to_something_else_is_a_failure(bad: bytes) -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("echo"))
    assert (
        answer(core.handle(ClusterAnswered(asked.pending, bad), 0.0)).header.rcode == RCODE.SERVFAIL
    )
    ask_cluster(core, query("echo"), 0.1)


def test_new_knowledge_forgets_negative_answers_only() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core)
    cluster_lacks(core, "late.team")
    assert len(core.cache) == 2
    core.update_names(NAMES.with_known(services={"echo", "late"}))
    assert len(core.cache) == 1
    ask_cluster(core, query("late.team"), 1.0)
    assert isinstance(decide(core, query("echo"), 1.0, udp=True), Send)


def test_cache_is_bounded() -> None:
    core = DnsCore(NAMES, cache_entries=2)
    for name in ("a.team", "b.team", "c.team"):
        asked = ask_cluster(core, query(name))
        fqdn = name + ".svc.cluster.local."
        core.handle(
            ClusterAnswered(asked.pending, cluster_reply(asked.wire, f"{fqdn} 30 A 10.96.0.1")), 0
        )
    assert len(core.cache) == 2
    ask_cluster(core, query("a.team"), 1.0)  # the oldest went first


def test_cache_ttl() -> None:
    q = DNSRecord.question(FQDN)
    positive = q.reply()
    positive.add_answer(*RR.fromZone(f"{FQDN} 30 A 10.0.0.1"), *RR.fromZone(f"{FQDN} 7 A 10.0.0.2"))
    assert cache_ttl(positive) == 7
    huge = q.reply()
    huge.add_answer(*RR.fromZone(f"{FQDN} 999999 A 10.0.0.1"))
    assert cache_ttl(huge) == 3600
    negative = q.reply()
    negative.header.rcode = RCODE.NXDOMAIN
    big_soa = RR("cluster.local.", QTYPE.SOA, ttl=3600, rdata=SOA("a.", "b.", (1, 2, 3, 4, 3600)))
    negative.add_auth(big_soa)
    assert cache_ttl(negative) == MAX_NEGATIVE_TTL
    no_data = q.reply()
    no_data.add_auth(SOA_RR)
    assert cache_ttl(no_data) == 5
    truncated = q.reply()
    truncated.header.tc = 1
    truncated.add_answer(*RR.fromZone(f"{FQDN} 30 A 10.0.0.1"))
    assert cache_ttl(truncated) is None


# --- size limits --------------------------------------------------------------


def _big_answer(core: DnsCore, wire: bytes, *, udp: bool) -> DNSRecord:
    asked = ask_cluster(core, wire, udp=udp)
    fqdn = "big.default.svc.cluster.local."
    lines = [f"{fqdn} 30 A 10.244.{i // 250}.{i % 250 + 1}" for i in range(100)]
    return answer(
        core.handle(ClusterAnswered(asked.pending, cluster_reply(asked.wire, *lines)), 0.0)
    )


def test_udp_answer_too_large_is_truncated() -> None:
    reply = _big_answer(DnsCore(NAMES), query("big", qid=21), udp=True)
    assert reply.header.tc == 1
    assert reply.header.id == 21
    assert reply.rr == []
    assert str(reply.q.qname) == "big."


def test_edns_client_gets_the_larger_answer_and_an_opt_record() -> None:
    reply = _big_answer(DnsCore(NAMES), query("big", edns=4096), udp=True)
    assert reply.header.tc == 0
    assert len(reply.rr) == 100
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT]


def test_tcp_answer_is_never_truncated() -> None:
    reply = _big_answer(DnsCore(NAMES), query("big"), udp=False)
    assert reply.header.tc == 0
    assert len(reply.rr) == 100


# --- a cache hit's reply kept by the query's bytes -----------------------------


def test_a_repeated_query_gets_what_the_full_path_gives_it() -> None:
    kept, fresh = DnsCore(NAMES), DnsCore(NAMES)
    for core in (kept, fresh):
        _answer_echo(core, now=100.0, ttl=30)
    first = decide(kept, query("echo", qid=8), 112.1, udp=True)
    (shown,) = kept._presented.values()
    again = decide(kept, query("echo", qid=9), 112.9, udp=True)  # the same second of age
    assert kept._presented[next(iter(kept._presented))] is shown  # sent from it, not made anew
    full = decide(fresh, query("echo", qid=9), 112.9, udp=True)
    assert isinstance(first, Send)
    assert isinstance(again, Send)
    assert again == full
    assert again.wire[2:] == first.wire[2:]
    assert DNSRecord.parse(again.wire).header.id == 9
    decide(fresh, query("echo", qid=8), 112.1, udp=True)
    assert kept.stats() == fresh.stats()


def test_a_kept_reply_follows_the_cache() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core, now=100.0, ttl=30)
    decide(core, query("echo"), 110.2, udp=True)
    # A second later the TTLs are a second lower.
    assert records(answer(decide(core, query("echo"), 111.2, udp=True)))[0][2] == 19
    # Replaced within the same second of age (two asks were out): the new answer.
    core = DnsCore(NAMES)
    one, two = ask_cluster(core, query("echo"), 100.0), ask_cluster(core, query("echo"), 100.0)
    core.handle(
        ClusterAnswered(one.pending, cluster_reply(one.wire, f"{FQDN} 30 A 10.96.7.7")), 100.0
    )
    decide(core, query("echo"), 100.5, udp=True)
    core.handle(
        ClusterAnswered(two.pending, cluster_reply(two.wire, f"{FQDN} 30 A 10.96.9.9")), 100.6
    )
    assert records(answer(decide(core, query("echo"), 100.7, udp=True)))[0][3] == "10.96.9.9"
    # Expired: asked again, and the new answer shown.
    asked = ask_cluster(core, query("echo"), 131.0)
    core.handle(
        ClusterAnswered(asked.pending, cluster_reply(asked.wire, f"{FQDN} 30 A 10.96.8.8")), 131.0
    )
    assert records(answer(decide(core, query("echo"), 131.5, udp=True))) == [
        ("echo.", "A", 30, "10.96.8.8")
    ]


def test_a_negative_answer_forgotten_on_new_knowledge_is_asked_again() -> None:
    core = DnsCore(NAMES)
    late = "late.team.svc.cluster.local"
    cluster_lacks(core, late)
    for _ in range(2):
        assert answer(decide(core, query(late), 0.5, udp=True)).header.rcode == RCODE.NXDOMAIN
    assert core.stats().nxdomain == 3
    core.update_names(NAMES.with_known(services={"echo", "late"}))
    ask_cluster(core, query(late), 0.6)


def test_a_name_classified_otherwise_is_not_answered_from_a_kept_reply() -> None:
    # echo.team is a namespace-shaped name: the cluster's first while "team" is a
    # namespace, the laptop's once it is gone, though the cluster's answer is
    # still cached.
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("echo.team"))
    reply = cluster_reply(asked.wire, "echo.team.svc.cluster.local. 30 A 10.96.3.3")
    core.handle(ClusterAnswered(asked.pending, reply), 0.0)
    assert isinstance(decide(core, query("echo.team"), 0.5, udp=True), Send)
    core.update_names(replace(NAMES, namespaces=frozenset()))
    assert isinstance(decide(core, query("echo.team"), 0.6, udp=True), AskUpstream)


def test_kept_replies_are_per_transport() -> None:
    core = DnsCore(NAMES)
    wire = query("big")
    _big_answer(core, wire, udp=False)
    for _ in range(2):
        assert answer(decide(core, wire, 0.5, udp=True)).header.tc == 1
        assert len(answer(decide(core, wire, 0.5, udp=False)).rr) == 100


def test_kept_replies_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ktpy.net.dns.PRESENTED_ENTRIES", 3)
    core = DnsCore(NAMES)
    _answer_echo(core)
    for qid in range(10):  # each letter case is other bytes
        name = "".join(c.upper() if qid >> i & 1 else c for i, c in enumerate("echo"))
        assert isinstance(decide(core, query(name), 1.0, udp=True), Send)
    assert len(core._presented) == 3


# --- statistics ---------------------------------------------------------------


def test_statistics() -> None:
    core = DnsCore(NAMES)
    _answer_echo(core)  # cluster, asked
    decide(core, query("echo"), 1.0, udp=True)  # cluster, cache hit
    decide(core, query("echo", "AAAA"), 1.0, udp=True)  # cluster, synthesised
    up = decide(core, query("example.org"), 1.0, udp=True)  # upstream
    assert isinstance(up, AskUpstream)
    nx = DNSRecord.parse(query("example.org")).reply()
    nx.header.rcode = RCODE.NXDOMAIN
    core.handle(UpstreamAnswered(up.pending, nx.pack()), 1.0)
    decide(core, b"", 1.0, udp=True)  # ignored
    core.note_dropped()
    assert core.stats() == DnsStats(
        queries=5,
        cluster=3,
        upstream=1,
        cache_hits=1,
        synthesized=1,
        cluster_asked=1,
        nxdomain=1,
        ignored=1,
        dropped=1,
    )
    assert core.stats().failures == 0


def test_stats_are_a_snapshot() -> None:
    core = DnsCore(NAMES)
    before = core.stats()
    decide(core, query("example.org"), 0.0, udp=True)
    assert before.queries == 0
    assert core.stats().queries == 1


def test_answers_keep_an_address_record_intact() -> None:
    core = DnsCore(NAMES)
    asked = ask_cluster(core, query("echo"))
    reply = answer(
        core.handle(
            ClusterAnswered(asked.pending, cluster_reply(asked.wire, f"{FQDN} 30 A 10.96.7.7")), 0
        )
    )
    assert reply.rr[0].rdata == A("10.96.7.7")
