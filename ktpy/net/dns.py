"""The DNS decision of `ktpy connect`: which names the cluster answers, pure.

Only names that can belong to the cluster go there; everything else goes to
the laptop's own resolvers untouched, so connecting never changes how the
internet resolves (kt-connect sent every name to the cluster first, #289).

The cluster's alone (its answer, NXDOMAIN included, is final):

- names under the cluster domain (``*.cluster.local``, read from the shadow
  pod's resolver search path by the caller);
- a single label naming a Service of the connect namespace;
- a reverse name (in-addr.arpa, ip6.arpa) inside a routed cluster range.

The cluster's first (``Route.CLUSTER_FIRST``): ``svc.ns``, ``svc.ns.svc``,
``pod.svc.ns`` and ``pod.svc.ns.svc`` with ``ns`` a namespace the caller
knows. These are also public names when a namespace is called ``dev``,
``app`` or ``test`` (``pkg.go.dev``, ``web.dev``), so the cluster decides only
for the names it has: a name whose Service or pod has an address record (A;
AAAA in an IPv6-only cluster) gets the cluster's answers for every type, and
is reported once (``Collision``); any other name (the cluster says NXDOMAIN or
NODATA) gets the laptop's resolvers' answer, byte for byte. Whether the
cluster has a name is asked once and cached by the SOA's negative TTL, so a
public name costs at most one extra round trip per name and TTL.

SRV names keep their ``_port._proto`` labels in front of any of these. A name
under one of the laptop's own search domains is the laptop's even if its last
label happens to be a namespace: the stub appended it, the user did not.

``DnsCore`` turns one query (``receive``) into actions and the outcome of an
action (``handle``) into the next ones, in the vocabulary of ktpy.sansio: no
sockets, no clock (``now`` comes in). The server carries out the actions:

- ``Send(wire)``: send the reply to the client (cache hit, synthesised reply);
- ``AskCluster(wire, pending)``: exchange ``wire`` with cluster DNS, then
  handle ``ClusterAnswered`` or ``ClusterFailed``;
- ``AskUpstream(wire, pending)``: ask the laptop's resolvers (``wire`` is the
  client's query, byte for byte), then handle ``UpstreamAnswered`` or
  ``UpstreamFailed``;
- ``Collision(name, cluster_name)``: tell the user, once per name, that a
  cluster-first name is the cluster's while connected;
- ``Ignore(reason)``: send nothing.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import assert_never

from dnslib import (
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from ktpy.params import IPNetwork as Network
from ktpy.sansio import Action, Event

CLASS_IN, CLASS_ANY = 1, 255  # dnslib's CLASS has no name for ANY

# Never answer a cluster name from cache longer than this, whatever the TTL.
MAX_TTL = 3600
# Negative answers are cached by the SOA minimum, but never long: a Service
# created a moment later should resolve soon.
MAX_NEGATIVE_TTL = 30
CACHE_ENTRIES = 4096
# Replies to cache hits kept by the query's bytes (DnsCore._presented_again): at
# most this many, for queries of at most this size (a UDP query's classic limit)
# and replies of at most that (over TCP one may be 64 KiB): 1.2 MiB at most.
PRESENTED_ENTRIES = 256
PRESENTED_QUERY_BYTES = 512
PRESENTED_REPLY_BYTES = 4096
# What we announce in our own OPT record: the size that avoids fragmentation.
EDNS_PAYLOAD = 1232
MAX_UDP_PAYLOAD = 4096
MIN_UDP_PAYLOAD = 512

# Types an IPv4-only cluster never has data for: answered empty at once.
# (HTTPS and SVCB are asked by browsers and new curls next to every A.)
NO_DATA_IN_IPV4_CLUSTER = frozenset({QTYPE.AAAA, QTYPE.HTTPS, QTYPE.SVCB})


def _labels(name: str) -> tuple[str, ...]:
    return tuple(label.lower() for label in name.strip(".").split(".") if label)


def _label_text(label: bytes) -> str:
    # DNS folds ASCII case only; latin-1 keeps any other byte as it is.
    return label.lower().decode("latin-1")


def _wire_name(name: str) -> DNSLabel:
    # From bytes, not text: dnslib would IDNA-encode a str.
    return DNSLabel(name.encode("latin-1"))


@dataclass(frozen=True)
class ClusterNames:
    """What the classification knows about the cluster; swapped whole on change.

    ``namespaces``: namespaces ktpy can see (watched), or the ones given with a
    flag when the user may not list them; the connect namespace always counts.
    ``services``: Service names of the connect namespace (watched).
    ``cidrs``: the routed cluster ranges, for reverse lookups.
    ``search``: the laptop's own search domains (its original resolv.conf).
    ``ipv6``: whether the cluster has IPv6 addresses at all.
    """

    domain: str
    namespace: str
    namespaces: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    cidrs: tuple[Network, ...] = ()
    search: tuple[str, ...] = ()
    ipv6: bool = False

    def __post_init__(self) -> None:
        domain = ".".join(_labels(self.domain))
        if not domain:
            raise ValueError("the cluster domain must not be empty")
        namespace = self.namespace.lower()
        set_ = object.__setattr__  # normalising a frozen dataclass once
        set_(self, "domain", domain)
        set_(self, "namespace", namespace)
        set_(self, "namespaces", frozenset(n.lower() for n in self.namespaces) | {namespace})
        set_(self, "services", frozenset(s.lower() for s in self.services))
        set_(self, "cidrs", tuple(ipaddress.ip_network(c) for c in self.cidrs))
        set_(self, "search", tuple(".".join(_labels(s)) for s in self.search if _labels(s)))

    def with_known(
        self, *, namespaces: Iterable[str] | None = None, services: Iterable[str] | None = None
    ) -> ClusterNames:
        """A copy with new namespace and/or Service sets (from a watch)."""
        return replace(
            self,
            namespaces=self.namespaces if namespaces is None else frozenset(namespaces),
            services=self.services if services is None else frozenset(services),
        )


class Route(enum.Enum):
    CLUSTER = "cluster"
    # Namespace-shaped: the cluster's if it has the name, else the laptop's.
    CLUSTER_FIRST = "cluster-first"
    UPSTREAM = "upstream"


@dataclass(frozen=True)
class Decision:
    """Where a name goes; ``ask`` is the absolute name cluster DNS answers,
    ``rule`` which rule decided (for logs and tests)."""

    route: Route
    rule: str
    ask: str | None = None


def _upstream(rule: str) -> Decision:
    return Decision(Route.UPSTREAM, rule)


def _reverse_network(labels: tuple[str, ...]) -> Network | None:
    """The network a reverse name stands for, or None if it is not one."""
    if labels[-2:] == ("in-addr", "arpa"):
        parts = labels[:-2]
        if not 1 <= len(parts) <= 4:
            return None
        if not all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
            return None
        octets = [int(p) for p in reversed(parts)] + [0] * (4 - len(parts))
        return IPv4Network((bytes(octets), 8 * len(parts)))
    if labels[-2:] == ("ip6", "arpa"):
        parts = labels[:-2]
        hexdigits = "0123456789abcdef"
        if not 1 <= len(parts) <= 32 or not all(len(p) == 1 and p in hexdigits for p in parts):
            return None
        nibbles = "".join(reversed(parts)).ljust(32, "0")
        return IPv6Network((int(nibbles, 16), 4 * len(parts)))
    return None


def _in_cluster_ranges(network: Network, cidrs: tuple[Network, ...]) -> bool:
    for cidr in cidrs:
        if isinstance(network, IPv4Network) and isinstance(cidr, IPv4Network):
            if network.subnet_of(cidr):
                return True
        elif (
            isinstance(network, IPv6Network)
            and isinstance(cidr, IPv6Network)
            and network.subnet_of(cidr)
        ):
            return True
    return False


def classify_labels(labels: tuple[str, ...], names: ClusterNames) -> Decision:
    """Classify a name given as lowercase labels (no empty root label)."""
    if not labels:
        return _upstream("root")
    domain = tuple(names.domain.split("."))
    absolute = ".".join(labels) + "."
    if labels[-len(domain) :] == domain:
        return Decision(Route.CLUSTER, "cluster-domain", absolute)

    network = _reverse_network(labels)
    if network is not None:
        if _in_cluster_ranges(network, names.cidrs):
            return Decision(Route.CLUSTER, "reverse", absolute)
        return _upstream("reverse-outside-cluster")
    if labels[-2:] in (("in-addr", "arpa"), ("ip6", "arpa")):
        return _upstream("reverse-outside-cluster")

    for search in names.search:
        suffix = tuple(search.split("."))
        if len(labels) > len(suffix) and labels[-len(suffix) :] == suffix:
            return _upstream("laptop-search-domain")

    # `_http._tcp.svc.ns`: the service labels ride along in front.
    prefix_len = 0
    while prefix_len < min(2, len(labels) - 1) and labels[prefix_len].startswith("_"):
        prefix_len += 1
    prefix, rest = labels[:prefix_len], labels[prefix_len:]
    known = names.namespaces

    def cluster(rule: str, *short: str, route: Route = Route.CLUSTER_FIRST) -> Decision:
        ask = ".".join((*prefix, *short, "svc", names.domain)) + "."
        return Decision(route, rule, ask)

    match rest:
        case (svc,) if svc in names.services:
            return cluster("service", svc, names.namespace, route=Route.CLUSTER)
        case (svc, ns) if ns in known:
            return cluster("service-namespace", svc, ns)
        case (svc, ns, "svc") if ns in known:
            return cluster("service-namespace-svc", svc, ns)
        case (pod, svc, ns) if ns in known:
            return cluster("pod-service-namespace", pod, svc, ns)
        case (pod, svc, ns, "svc") if ns in known:
            return cluster("pod-service-namespace-svc", pod, svc, ns)
    return _upstream("not-a-cluster-name")


def classify(name: str, names: ClusterNames) -> Decision:
    """Where a query for ``name`` goes (case-insensitive, trailing dot optional)."""
    return classify_labels(_labels(name), names)


# --- cache -----------------------------------------------------------------

CacheKey = tuple[str, int, int]  # (asked name lowercase, qtype, qclass)


def cache_ttl(reply: DNSRecord) -> int | None:
    """How long a cluster answer may be reused, or None for "do not cache".

    Positive answers: the smallest TTL among the answer records. Negative
    answers (NXDOMAIN, or NOERROR without answers): the SOA's minimum (or its
    TTL if lower, RFC 2308), bounded; without an SOA they are not cached.
    SERVFAIL, REFUSED and truncated answers are never cached.
    """
    rcode = reply.header.rcode
    if reply.header.tc or rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
        return None
    answers = [rr for rr in reply.rr if rr.rtype != QTYPE.OPT]
    if rcode == RCODE.NOERROR and answers:
        ttl = min(rr.ttl for rr in answers)
        return min(ttl, MAX_TTL) if ttl > 0 else None
    soas = [rr for rr in reply.auth if rr.rtype == QTYPE.SOA]
    if not soas:
        return None
    soa = soas[0]
    ttl = min(soa.ttl, soa.rdata.times[4])
    return min(ttl, MAX_NEGATIVE_TTL) if ttl > 0 else None


def has_records(reply: DNSRecord) -> bool:
    """A NOERROR answer with records: the name exists there with this type."""
    return bool(
        reply.header.rcode == RCODE.NOERROR and any(rr.rtype != QTYPE.OPT for rr in reply.rr)
    )


@dataclass
class _Entry:
    reply: DNSRecord
    stored: float
    expires: float

    @property
    def negative(self) -> bool:
        return bool(self.reply.header.rcode != RCODE.NOERROR or not self.reply.rr)


@dataclass(frozen=True)
class _Presented:
    """A cache hit's reply as sent, and what it was made of: the cache entries
    consulted (the name's last) and its age in whole seconds (TTLs count those)."""

    consulted: tuple[tuple[CacheKey, _Entry], ...]
    age: int
    reply: bytes


class DnsCache:
    """Cluster answers by (name, type, class), least recently used out first."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, reply: DNSRecord, now: float) -> bool:
        ttl = cache_ttl(reply)
        if ttl is None:
            return False
        self._entries[key] = _Entry(reply, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def forget_negative(self) -> None:
        """Drop cached "no such name" answers (a watch saw something new)."""
        for key in [k for k, e in self._entries.items() if e.negative]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


# --- statistics --------------------------------------------------------------


@dataclass
class DnsStats:
    """Counters for `ktpy doctor`. ``cluster`` counts every query classified as
    the cluster's or cluster-first, of which ``cache_hits`` and ``synthesized``
    never left the laptop and ``cluster_asked`` went to cluster DNS (a
    cluster-first name may be asked twice: whether it exists, then its type);
    ``fallbacks`` of them went on to the laptop's resolvers."""

    queries: int = 0
    cluster: int = 0
    upstream: int = 0
    cache_hits: int = 0
    synthesized: int = 0
    cluster_asked: int = 0
    nxdomain: int = 0
    cluster_failures: int = 0
    upstream_failures: int = 0
    fallbacks: int = 0  # cluster-first names the cluster lacks, sent to the laptop's resolvers
    ignored: int = 0
    dropped: int = 0  # the server was too busy to take the query

    @property
    def failures(self) -> int:
        return self.cluster_failures + self.upstream_failures


# --- actions ---------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPending:
    """A query waiting for cluster DNS. ``probe``: ``key`` asks whether a
    cluster-first name exists in the cluster (its owner's address record), on
    behalf of the client's question; ``wire`` is the client's query as it came,
    for the laptop's resolvers if the cluster does not have the name."""

    query: DNSRecord
    decision: Decision
    ask: str
    key: CacheKey
    udp_limit: int | None  # None: the client asked over TCP
    wire: bytes = b""
    probe: bool = False


@dataclass(frozen=True)
class UpstreamPending:
    """A query waiting for the laptop's resolvers."""

    query: DNSRecord | None  # None: unparseable, forwarded as it came
    decision: Decision
    udp_limit: int | None


@dataclass(frozen=True, slots=True)
class Send(Action):
    """Send the reply to the client."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class AskCluster(Action):
    wire: bytes
    pending: ClusterPending


@dataclass(frozen=True, slots=True)
class AskUpstream(Action):
    wire: bytes
    pending: UpstreamPending


@dataclass(frozen=True, slots=True)
class Collision(Action):
    """Tell the user: ``name`` (as asked, lowercase, no dot) is a cluster-first
    name the cluster has (``cluster_name``), so the cluster answers it while
    connected, whatever the laptop's resolvers would say. Once per name."""

    name: str
    cluster_name: str


@dataclass(frozen=True, slots=True)
class Ignore(Action):
    """Send nothing."""

    reason: str


DnsAction = Send | AskCluster | AskUpstream | Collision | Ignore


# --- events: the outcome of an AskCluster or AskUpstream ---------------------


@dataclass(frozen=True, slots=True)
class ClusterAnswered(Event):
    pending: ClusterPending
    wire: bytes


@dataclass(frozen=True, slots=True)
class ClusterFailed(Event):
    pending: ClusterPending


@dataclass(frozen=True, slots=True)
class UpstreamAnswered(Event):
    pending: UpstreamPending
    wire: bytes


@dataclass(frozen=True, slots=True)
class UpstreamFailed(Event):
    pending: UpstreamPending


DnsEvent = ClusterAnswered | ClusterFailed | UpstreamAnswered | UpstreamFailed


def udp_limit_of(query: DNSRecord) -> int:
    """How large a UDP reply this client accepts (its EDNS size, else 512)."""
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(MIN_UDP_PAYLOAD, min(int(rr.edns_len), MAX_UDP_PAYLOAD))
    return MIN_UDP_PAYLOAD


def _has_edns(query: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in query.ar)


def _reply_header(query: DNSRecord, rcode: int, *, aa: int = 0, tc: int = 0) -> DNSHeader:
    return DNSHeader(
        id=query.header.id,
        qr=1,
        opcode=query.header.opcode,
        aa=aa,
        tc=tc,
        rd=query.header.rd,
        ra=1,
        rcode=rcode,
    )


def _empty_reply(query: DNSRecord, rcode: int, *, tc: int = 0) -> DNSRecord:
    reply = DNSRecord(_reply_header(query, rcode, tc=tc), questions=list(query.questions))
    if _has_edns(query):
        reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
    return reply


def _rename(rr: RR, asked: DNSLabel, qname: DNSLabel, age: int) -> RR:
    owner = qname if rr.rname == asked else rr.rname
    return RR(owner, rr.rtype, rr.rclass, max(0, rr.ttl - age), rr.rdata)


class DnsCore:
    """Decides each query and builds each reply; keeps the cache and counters.

    Not thread-safe: the server calls it under one lock (every call is short).
    """

    def __init__(self, names: ClusterNames, *, cache_entries: int = CACHE_ENTRIES) -> None:
        self.names = names
        self.cache = DnsCache(cache_entries)
        self._stats = DnsStats()
        self._collisions: set[str] = set()  # cluster-first names already reported
        # A query's bytes after its id (and the transport) -> its last reply.
        self._presented: OrderedDict[tuple[bool, bytes], _Presented] = OrderedDict()

    def stats(self) -> DnsStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def _count(self, **increments: int) -> None:
        for name, value in increments.items():
            setattr(self._stats, name, getattr(self._stats, name) + value)

    def note_dropped(self) -> None:
        self._count(dropped=1)

    def update_names(self, names: ClusterNames) -> None:
        """New knowledge from a watch. Cached negative answers go: the name a
        user just retried may exist now."""
        self.names = names
        self.cache.forget_negative()
        self._presented.clear()  # a name may be classified otherwise now

    # -- queries -----------------------------------------------------------

    def receive(self, wire: bytes, now: float, *, udp: bool) -> list[DnsAction]:
        """A query from a client: one action."""
        return [self._decide(wire, now, udp)]

    def _decide(self, wire: bytes, now: float, udp: bool) -> DnsAction:
        self._count(queries=1)
        if len(wire) < 12:
            self._count(ignored=1)
            return Ignore("shorter than a DNS header")
        if wire[2] & 0x80:
            self._count(ignored=1)
            return Ignore("a response, not a query")
        memo = (udp, bytes(wire[2:])) if len(wire) <= PRESENTED_QUERY_BYTES else None
        if memo is not None and (again := self._presented_again(memo, now)) is not None:
            return Send(bytes(wire[:2]) + again[2:])
        try:
            query = DNSRecord.parse(wire)
        except (DNSError, UnicodeError, ValueError):
            # Not ours to judge: it goes where it went before ktpy.
            return self._to_upstream(wire, None, _upstream("unparseable"))
        if (
            query.header.opcode != 0
            or len(query.questions) != 1
            or query.q.qclass not in (CLASS_IN, CLASS_ANY)
        ):
            return self._to_upstream(wire, query, _upstream("not-a-plain-query"))
        question: DNSQuestion = query.q
        decision_labels = tuple(map(_label_text, question.qname.label))
        decision = classify_labels(decision_labels, self.names)
        limit = udp_limit_of(query) if udp else None
        if decision.route is Route.UPSTREAM:
            return self._to_upstream(wire, query, decision, limit)

        self._count(cluster=1)
        name = decision.ask or ".".join(decision_labels) + "."
        consulted: tuple[tuple[CacheKey, _Entry], ...] = ()
        if decision.route is Route.CLUSTER_FIRST:
            owner = self._owner(name)
            probe: CacheKey = (owner, self._probe_type(), int(question.qclass))
            entry = self.cache.get(probe, now)
            if entry is None:
                self._count(cluster_asked=1)
                return self._ask(query, decision, wire, probe, limit, probe=True)
            if not has_records(entry.reply):
                self._count(fallbacks=1)
                return self._to_upstream(wire, query, decision, limit, counted=True)
            consulted = ((probe, entry),)
        return self._cluster(query, decision, wire, name, limit, now, memo, consulted)

    def _cluster(
        self,
        query: DNSRecord,
        decision: Decision,
        wire: bytes,
        name: str,
        limit: int | None,
        now: float,
        memo: tuple[bool, bytes] | None = None,
        consulted: tuple[tuple[CacheKey, _Entry], ...] = (),
    ) -> Send | AskCluster:
        """A name the cluster has (or is alone to answer): from the cache, made
        up, or asked. A reply from the cache is kept under ``memo``, the query's
        bytes, with the entries ``consulted`` on the way."""
        question: DNSQuestion = query.q
        key: CacheKey = (name, int(question.qtype), int(question.qclass))
        entry = self.cache.get(key, now)
        if entry is not None:
            self._count(cache_hits=1)
            age = now - entry.stored
            reply = self._present(query, entry.reply, name, limit, age)
            if memo is not None and len(reply) <= PRESENTED_REPLY_BYTES:
                shown = _Presented((*consulted, (key, entry)), int(age), reply)
                self._presented[memo] = shown
                self._presented.move_to_end(memo)
                while len(self._presented) > PRESENTED_ENTRIES:
                    self._presented.popitem(last=False)
            return Send(reply)
        if not self.names.ipv6 and question.qtype in NO_DATA_IN_IPV4_CLUSTER:
            return Send(self._no_data(query, name, limit, now))
        self._count(cluster_asked=1)
        return self._ask(query, decision, wire, key, limit)

    def _presented_again(self, memo: tuple[bool, bytes], now: float) -> bytes | None:
        """The reply last made for these query bytes, if the cache would make the
        same one now: the same entries, the same whole second of age. Saves
        dnslib's parse of the query and the pack of the reply, most of a cache
        hit's cost (docs/performance.md, cached DNS)."""
        shown = self._presented.get(memo)
        if shown is None:
            return None
        last = shown.consulted[-1][1]
        if (
            any(self.cache.get(key, now) is not entry for key, entry in shown.consulted)
            or int(now - last.stored) != shown.age
        ):
            del self._presented[memo]
            return None
        self._presented.move_to_end(memo)
        nxdomain = last.reply.header.rcode == RCODE.NXDOMAIN  # as _present counts it
        self._count(cluster=1, cache_hits=1, nxdomain=int(nxdomain))
        return shown.reply

    @staticmethod
    def _ask(
        query: DNSRecord,
        decision: Decision,
        wire: bytes,
        key: CacheKey,
        limit: int | None,
        *,
        probe: bool = False,
    ) -> AskCluster:
        name, qtype, qclass = key
        ask = DNSRecord(DNSHeader(id=query.header.id, rd=1))
        ask.add_question(DNSQuestion(_wire_name(name), qtype, qclass))
        pending = ClusterPending(query, decision, name, key, limit, wire, probe)
        return AskCluster(ask.pack(), pending)

    @staticmethod
    def _owner(name: str) -> str:
        """The Service or pod a name stands for: without its SRV labels."""
        labels = name.split(".")
        prefix = 0  # at most two, as classify_labels reads them
        while prefix < min(2, len(labels) - 1) and labels[prefix].startswith("_"):
            prefix += 1
        return ".".join(labels[prefix:])

    def _probe_type(self) -> int:
        """The address type every Service and pod of this cluster has."""
        v4 = not self.names.cidrs or any(c.version == 4 for c in self.names.cidrs)
        return int(QTYPE.A if v4 else QTYPE.AAAA)

    def _to_upstream(
        self,
        wire: bytes,
        query: DNSRecord | None,
        decision: Decision,
        limit: int | None = None,
        *,
        counted: bool = False,
    ) -> AskUpstream:
        if not counted:  # a cluster-first name counts as the cluster's
            self._count(upstream=1)
        return AskUpstream(wire, UpstreamPending(query, decision, limit))

    def _no_data(self, query: DNSRecord, ask: str, limit: int | None, now: float) -> bytes:
        """Empty NOERROR for a type the cluster has none of; NXDOMAIN if the
        A query for the same name just came back NXDOMAIN."""
        self._count(synthesized=1)
        a_entry = self.cache.get((ask, QTYPE.A, int(query.q.qclass)), now)
        if a_entry is not None and a_entry.reply.header.rcode == RCODE.NXDOMAIN:
            self._count(nxdomain=1)
            return self._present(query, a_entry.reply, ask, limit, now - a_entry.stored, bare=True)
        return self._fit(_empty_reply(query, RCODE.NOERROR), query, limit)

    # -- outcomes ----------------------------------------------------------

    def handle(self, event: DnsEvent, now: float) -> list[DnsAction]:
        """The outcome of an AskCluster or AskUpstream: the reply, if any."""
        match event:
            case ClusterAnswered(pending, wire):
                return self._cluster_answered(pending, wire, now)
            case ClusterFailed(pending):
                return [self._cluster_failed(pending)]
            case UpstreamAnswered(pending, wire):
                return [self._upstream_answered(wire)]
            case UpstreamFailed(pending):
                return [self._upstream_failed(pending)]
            case _:
                assert_never(event)

    def _cluster_answered(
        self, pending: ClusterPending, wire: bytes, now: float
    ) -> list[DnsAction]:
        query, ask = pending.query, pending.ask
        try:
            reply = DNSRecord.parse(wire)
        except (DNSError, UnicodeError, ValueError):
            return [self._cluster_failed(pending)]
        if (
            not reply.header.qr
            or len(reply.questions) != 1
            or reply.q.qname != _wire_name(ask)
            or reply.q.qtype != pending.key[1]
        ):
            return [self._cluster_failed(pending)]
        self.cache.put(pending.key, reply, now)
        if not pending.probe or reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            # The answer to the client's question, or the cluster's failure.
            return [Send(self._present(query, reply, ask, pending.udp_limit, 0))]
        decision = pending.decision
        if not has_records(reply):
            # Not a Service or pod of the cluster: the laptop's name, if anyone's.
            self._count(fallbacks=1)
            return [
                self._to_upstream(pending.wire, query, decision, pending.udp_limit, counted=True)
            ]
        actions: list[DnsAction] = []
        shown = self._owner(".".join(map(_label_text, query.q.qname.label)))
        if shown not in self._collisions:
            self._collisions.add(shown)
            actions.append(Collision(shown, ask))
        name = decision.ask or ask
        if (name, int(query.q.qtype), int(query.q.qclass)) == pending.key:
            actions.append(Send(self._present(query, reply, ask, pending.udp_limit, 0)))
        else:
            actions.append(
                self._cluster(query, decision, pending.wire, name, pending.udp_limit, now)
            )
        return actions

    def _cluster_failed(self, pending: ClusterPending) -> Send:
        self._count(cluster_failures=1)  # failures are not cached
        reply = _empty_reply(pending.query, RCODE.SERVFAIL)
        return Send(self._fit(reply, pending.query, pending.udp_limit))

    def _upstream_answered(self, wire: bytes) -> Send:
        """The laptop's resolver's answer goes back byte for byte."""
        if len(wire) >= 4 and wire[3] & 0x0F == RCODE.NXDOMAIN:
            self._count(nxdomain=1)
        return Send(wire)

    def _upstream_failed(self, pending: UpstreamPending) -> Send | Ignore:
        self._count(upstream_failures=1)
        if pending.query is None:
            return Ignore("no upstream answered an unparseable query")
        reply = _empty_reply(pending.query, RCODE.SERVFAIL)
        return Send(self._fit(reply, pending.query, pending.udp_limit))

    # -- replies -----------------------------------------------------------

    def _present(
        self,
        query: DNSRecord,
        stored: DNSRecord,
        ask: str,
        limit: int | None,
        age: float,
        *,
        bare: bool = False,
    ) -> bytes:
        """The cluster's answer to ``ask`` as an answer to the client's question:
        its id and question (with its letter case), owner names renamed back,
        TTLs aged. ``bare``: rcode and authority only (no answer records)."""
        rcode = stored.header.rcode
        if rcode == RCODE.NXDOMAIN and not bare:
            self._count(nxdomain=1)
        reply = DNSRecord(
            _reply_header(query, rcode, aa=stored.header.aa), questions=list(query.questions)
        )
        asked, qname, seconds = _wire_name(ask), query.q.qname, int(age)
        if not bare:
            reply.rr = [_rename(rr, asked, qname, seconds) for rr in stored.rr]
        reply.auth = [_rename(rr, asked, qname, seconds) for rr in stored.auth]
        if not bare:
            reply.ar = [
                _rename(rr, asked, qname, seconds) for rr in stored.ar if rr.rtype != QTYPE.OPT
            ]
        if _has_edns(query):
            reply.ar.append(EDNS0(udp_len=EDNS_PAYLOAD))
        return self._fit(reply, query, limit)

    @staticmethod
    def _fit(reply: DNSRecord, query: DNSRecord, limit: int | None) -> bytes:
        """Pack; over UDP, a reply too large for the client is cut to header,
        question and TC so it asks again over TCP."""
        wire: bytes = reply.pack()
        if limit is None or len(wire) <= limit:
            return wire
        cut = _empty_reply(query, reply.header.rcode, tc=1)
        cut.header.aa = reply.header.aa
        packed: bytes = cut.pack()
        return packed
