"""Which names go to the cluster: each rule, and the traps around them."""

from __future__ import annotations

import ipaddress

import pytest

from ktpy.net.dns import ClusterNames, Decision, Route, classify

NAMES = ClusterNames(
    domain="cluster.local",
    namespace="default",
    namespaces=frozenset({"team", "kube-system"}),
    services=frozenset({"echo", "web"}),
    cidrs=(ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("10.244.0.0/16")),
    search=("corp.example",),
)


def cluster(ask: str, rule: str) -> Decision:
    return Decision(Route.CLUSTER, rule, ask)


def first(ask: str, rule: str) -> Decision:
    """Cluster-first: the cluster's if it has the name, else the laptop's."""
    return Decision(Route.CLUSTER_FIRST, rule, ask)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Under the cluster domain: asked as it is.
        (
            "echo.default.svc.cluster.local",
            cluster("echo.default.svc.cluster.local.", "cluster-domain"),
        ),
        (
            "Echo.Team.SVC.Cluster.Local.",
            cluster("echo.team.svc.cluster.local.", "cluster-domain"),
        ),
        ("cluster.local.", cluster("cluster.local.", "cluster-domain")),
        (
            "anything.at.all.cluster.local",
            cluster("anything.at.all.cluster.local.", "cluster-domain"),
        ),
        # A single label: a Service of the connect namespace.
        ("echo", cluster("echo.default.svc.cluster.local.", "service")),
        ("WEB.", cluster("web.default.svc.cluster.local.", "service")),
        # svc.ns and svc.ns.svc with a known namespace (the connect one always is):
        # the cluster's first, since `web.dev` may be a public name too.
        ("echo.team", first("echo.team.svc.cluster.local.", "service-namespace")),
        ("other.default", first("other.default.svc.cluster.local.", "service-namespace")),
        ("echo.team.svc", first("echo.team.svc.cluster.local.", "service-namespace-svc")),
        # StatefulSet pods: pod.svc.ns and pod.svc.ns.svc.
        (
            "web-0.nginx.team",
            first("web-0.nginx.team.svc.cluster.local.", "pod-service-namespace"),
        ),
        (
            "web-0.nginx.team.svc",
            first("web-0.nginx.team.svc.cluster.local.", "pod-service-namespace-svc"),
        ),
        # SRV names carry their _port._proto labels in front.
        ("_http._tcp.echo", cluster("_http._tcp.echo.default.svc.cluster.local.", "service")),
        (
            "_http._tcp.echo.team",
            first("_http._tcp.echo.team.svc.cluster.local.", "service-namespace"),
        ),
    ],
)
def test_cluster_names(name: str, expected: Decision) -> None:
    assert classify(name, NAMES) == expected


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("www.example.org", "not-a-cluster-name"),
        ("example.org", "not-a-cluster-name"),
        ("localhost", "not-a-cluster-name"),
        (".", "root"),
        # A single label that is not a Service of the connect namespace.
        ("nosuch", "not-a-cluster-name"),
        ("default", "not-a-cluster-name"),
        ("team", "not-a-cluster-name"),
        # Unknown namespaces.
        ("echo.elsewhere", "not-a-cluster-name"),
        ("echo.elsewhere.svc", "not-a-cluster-name"),
        ("web-0.nginx.elsewhere", "not-a-cluster-name"),
        # Same last labels as the cluster domain, not under it.
        ("evilcluster.local", "not-a-cluster-name"),
        ("echo.default.svc.cluster.local.corp.example", "laptop-search-domain"),
        ("echo.default.svc.cluster", "not-a-cluster-name"),
        # Too many labels for any short form.
        ("a.web-0.nginx.team.svc", "not-a-cluster-name"),
        ("a.b.c.team", "not-a-cluster-name"),
    ],
)
def test_other_names_stay_upstream(name: str, rule: str) -> None:
    assert classify(name, NAMES) == Decision(Route.UPSTREAM, rule)


@pytest.mark.parametrize(
    "name",
    [
        # What a stub makes of `echo` and `echo.team` with `search corp.example`.
        "echo.corp.example",
        "echo.team.corp.example",
        "echo.team.svc.corp.example",
        "web-0.nginx.team.corp.example",
    ],
)
def test_search_path_expansions_are_not_cluster_names(name: str) -> None:
    assert classify(name, NAMES).route is Route.UPSTREAM
    # ... even without knowing the laptop's search domains.
    without_search = ClusterNames("cluster.local", "default", NAMES.namespaces, NAMES.services)
    assert classify(name, without_search).route is Route.UPSTREAM


def test_a_namespace_named_like_the_laptops_domain_does_not_capture_it() -> None:
    """With a namespace `example`, `echo.corp.example` looks like pod.svc.ns;
    the laptop's search domain says the stub made it."""
    names = NAMES.with_known(namespaces={"example", "corp"})
    assert classify("echo.corp.example", names) == Decision(Route.UPSTREAM, "laptop-search-domain")
    assert classify("x.y.corp.example", names).route is Route.UPSTREAM
    # The namespace still works on its own.
    assert classify("echo.example", names).route is Route.CLUSTER_FIRST


def test_known_sets_can_change() -> None:
    assert classify("api", NAMES).route is Route.UPSTREAM
    grown = NAMES.with_known(services={"api"}, namespaces={"prod"})
    assert classify("api", grown) == cluster("api.default.svc.cluster.local.", "service")
    assert classify("api.prod", grown).route is Route.CLUSTER_FIRST
    assert classify("echo", grown).route is Route.UPSTREAM, "echo is gone from the set"
    assert classify("echo.team", grown).route is Route.UPSTREAM, "team is gone too"
    assert classify("echo.default", grown).route is Route.CLUSTER_FIRST, "connect namespace stays"


def test_inputs_are_normalised() -> None:
    names = ClusterNames(
        domain=".Cluster.Local.",
        namespace="Dev",
        namespaces=frozenset({"QA"}),
        services=frozenset({"Echo"}),
        cidrs=("10.96.0.0/16",),  # type: ignore[arg-type]
        search=("Corp.Example.", ""),
    )
    assert names.domain == "cluster.local"
    assert names.namespaces == {"qa", "dev"}
    assert names.services == {"echo"}
    assert names.cidrs == (ipaddress.ip_network("10.96.0.0/16"),)
    assert names.search == ("corp.example",)
    assert classify("echo", names) == cluster("echo.dev.svc.cluster.local.", "service")


def test_empty_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="domain"):
        ClusterNames(domain=".", namespace="default")


def test_another_cluster_domain() -> None:
    names = ClusterNames("k8s.corp.example", "default", services=frozenset({"echo"}))
    assert classify("echo", names) == cluster("echo.default.svc.k8s.corp.example.", "service")
    assert classify("x.svc.k8s.corp.example", names).route is Route.CLUSTER
    assert classify("x.svc.cluster.local", names).route is Route.UPSTREAM


@pytest.mark.parametrize(
    ("name", "route"),
    [
        ("10.0.96.10.in-addr.arpa", Route.CLUSTER),  # 10.96.0.10
        ("7.0.244.10.in-addr.arpa.", Route.CLUSTER),  # a pod
        ("96.10.in-addr.arpa", Route.CLUSTER),  # exactly the service range
        ("0.96.10.in-addr.arpa", Route.CLUSTER),
        ("10.in-addr.arpa", Route.UPSTREAM),  # wider than any cluster range
        ("1.0.168.192.in-addr.arpa", Route.UPSTREAM),
        ("10.0.97.10.in-addr.arpa", Route.UPSTREAM),
        ("300.0.96.10.in-addr.arpa", Route.UPSTREAM),  # not an address
        ("1.10.0.96.10.in-addr.arpa", Route.UPSTREAM),
        ("x.96.10.in-addr.arpa", Route.UPSTREAM),
        ("in-addr.arpa", Route.UPSTREAM),
    ],
)
def test_reverse_ipv4(name: str, route: Route) -> None:
    decision = classify(name, NAMES)
    assert decision.route is route
    if route is Route.CLUSTER:
        assert decision.ask == name.lower().rstrip(".") + "."


def test_reverse_ipv6() -> None:
    names = ClusterNames(
        "cluster.local", "default", cidrs=(ipaddress.ip_network("fd00:10:96::/112"),), ipv6=True
    )
    inside = ipaddress.ip_address("fd00:10:96::a").reverse_pointer
    outside = ipaddress.ip_address("2001:db8::1").reverse_pointer
    assert classify(inside, names).route is Route.CLUSTER
    assert classify(outside, names).route is Route.UPSTREAM
    # An IPv4 reverse name never matches an IPv6 range, nor the reverse.
    assert classify("10.0.96.10.in-addr.arpa", names).route is Route.UPSTREAM
    assert classify(inside, NAMES).route is Route.UPSTREAM
    assert classify("g.0.0.ip6.arpa", names).route is Route.UPSTREAM
