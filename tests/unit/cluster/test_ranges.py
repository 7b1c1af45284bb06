from ipaddress import ip_network

from ktpy.cluster import ranges
from ktpy.cluster.api import Invalid, Kind
from tests.unit.fakes import FakeCluster

REFUSAL = (
    'Service "p" is invalid: spec.clusterIPs: Invalid value: ["0.0.0.1"]: failed to allocate '
    "IP 0.0.0.1: the provided IP (0.0.0.1) is not in the valid range. "
    "The range of valid IPs is 10.96.0.0/16"
)


def test_ranges_from_the_api_servers_refusal() -> None:
    assert ranges.ranges_from_refusal(REFUSAL) == (ip_network("10.96.0.0/16"),)
    dual = REFUSAL.replace("10.96.0.0/16", "10.96.0.0/16,fd00:10:96::/112")
    assert ranges.ranges_from_refusal(dual) == (
        ip_network("10.96.0.0/16"),
        ip_network("fd00:10:96::/112"),
    )
    assert ranges.ranges_from_refusal("some other error") == ()


def test_covering_networks_groups_addresses() -> None:
    got = ranges.covering_networks(["10.244.1.7", "10.244.1.9", "10.244.2.3", "None", ""], 24)
    assert got == (ip_network("10.244.1.0/24"), ip_network("10.244.2.0/24"))


def test_cluster_domain_from_a_pods_search_path() -> None:
    conf = "search demo.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n"
    assert ranges.cluster_domain(conf) == "cluster.local"
    assert ranges.cluster_domain("search a.svc.corp.k8s svc.corp.k8s corp.k8s\n") == "corp.k8s"
    assert ranges.cluster_domain("nameserver 1.1.1.1\n") is None


def test_service_ranges_prefer_servicecidr_objects() -> None:
    cluster = FakeCluster()
    cluster.put(
        Kind.SERVICE_CIDR,
        {"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}},
    )
    found = ranges.service_ranges(cluster, "default")
    assert found.networks == (ip_network("10.96.0.0/16"),)
    assert found.source == "ServiceCIDR objects"


def test_service_ranges_from_the_refusal_when_servicecidrs_are_forbidden() -> None:
    cluster = FakeCluster()
    cluster.forbid("list", Kind.SERVICE_CIDR)
    cluster.fail_next("create", Kind.SERVICE, Invalid(REFUSAL))
    found = ranges.service_ranges(cluster, "default")
    assert found.networks == (ip_network("10.96.0.0/16"),)
    assert "out-of-range" in found.source
    assert cluster.list_objects(Kind.SERVICE, "default").items == ()  # a dry run made nothing


def test_pod_ranges_fall_back_to_observed_pods_and_say_so() -> None:
    cluster = FakeCluster()
    cluster.forbid("list", Kind.NODE)
    cluster.put(
        Kind.POD,
        {
            "metadata": {"name": "a", "namespace": "dev"},
            "status": {"podIPs": [{"ip": "10.244.3.9"}]},
        },
    )
    found = ranges.pod_ranges(cluster, "dev")
    assert found.networks == (ip_network("10.244.3.0/24"),)
    assert "guessed" in found.source
