"""Which address ranges the cluster uses, read from the cluster itself.

Service ranges come from ServiceCIDR objects (networking.k8s.io/v1) when the
server has them, else from the API server's own answer to a Service with an
impossible ClusterIP (a dry run: nothing is created). Pod ranges come from the
Nodes' spec.podCIDRs. Only when those reads are forbidden does ktpy fall back
to the addresses it can see (Services and pods of the namespace), and it says
so. kt-connect only ever guessed from sampled addresses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ktpy.cluster.api import ApiError, ClusterApi, Invalid, Kind, NotFound
from ktpy.errors import Forbidden
from ktpy.params import IPNetwork

_RANGE_IN_MESSAGE = re.compile(r"valid IPs is ([0-9a-fA-F:./]+(?:,[0-9a-fA-F:./]+)*)")
# A clusterIP that no service range holds: the server refuses it and names its ranges.
_IMPOSSIBLE_CLUSTER_IP = "0.0.0.1"


@dataclass(frozen=True)
class Ranges:
    networks: tuple[IPNetwork, ...]
    source: str  # where they were read, for the user
    # Read from what the namespace shows, because the cluster's own ranges were not
    # readable (the ClusterRole of docs/rbac/connect-ranges.yaml is missing).
    guessed: bool = False


def networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in texts if t.strip())


def ranges_from_refusal(message: str) -> tuple[IPNetwork, ...]:
    """The service ranges named in the API server's refusal of an out-of-range clusterIP."""
    match = _RANGE_IN_MESSAGE.search(message)
    return networks(match.group(1).split(",")) if match else ()


def covering_networks(addresses: Iterable[str], prefix: int = 24) -> tuple[IPNetwork, ...]:
    """The /prefix networks holding the given addresses (the fallback guess)."""
    found: set[IPNetwork] = set()
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        bits = prefix if address.version == 4 else 64
        found.add(ipaddress.ip_network(f"{address}/{bits}", strict=False))
    return tuple(sorted(found, key=lambda n: (n.version, int(n.network_address))))


def service_ranges(api: ClusterApi, namespace: str) -> Ranges:
    try:
        listed = api.list_objects(Kind.SERVICE_CIDR, None)
        cidrs = [c for item in listed.items for c in (item.get("spec") or {}).get("cidrs", ())]
        if cidrs:
            return Ranges(networks(cidrs), "ServiceCIDR objects")
    except (NotFound, Forbidden):
        pass  # not served by this cluster, or not readable by this user
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ktpy-range-probe"},
        "spec": {"clusterIP": _IMPOSSIBLE_CLUSTER_IP, "ports": [{"port": 1}]},
    }
    try:
        api.create(Kind.SERVICE, namespace, probe, dry_run=True)
    except Invalid as exc:
        found = ranges_from_refusal(exc.message)
        if found:
            return Ranges(found, "the API server's answer to an out-of-range ClusterIP")
    except (ApiError, Forbidden):
        pass
    listed = api.list_objects(Kind.SERVICE, namespace)
    seen = [
        ip
        for item in listed.items
        for ip in (item.get("spec") or {}).get("clusterIPs") or ()
        if ip and ip != "None"
    ]
    return Ranges(
        covering_networks(seen, 16),
        f"guessed from the Services of namespace {namespace} (reading the service range "
        "was not allowed)",
        guessed=True,
    )


def pod_ranges(api: ClusterApi, namespace: str) -> Ranges:
    try:
        nodes = api.list_objects(Kind.NODE, None).items
        cidrs = [c for node in nodes for c in (node.get("spec") or {}).get("podCIDRs") or ()]
        if cidrs:
            return Ranges(networks(cidrs), "the Nodes' spec.podCIDRs")
    except Forbidden:
        pass
    pods = api.list_objects(Kind.POD, namespace).items
    seen = [
        str(entry.get("ip"))
        for pod in pods
        for entry in (pod.get("status") or {}).get("podIPs") or ()
    ]
    return Ranges(
        covering_networks(seen, 24),
        f"guessed from the pods of namespace {namespace} (listing Nodes was not allowed)",
        guessed=True,
    )


def cluster_domain(resolv_conf: str) -> str | None:
    """The cluster domain from a pod's resolv.conf search path (`<ns>.svc.<domain> ...`)."""
    for line in resolv_conf.splitlines():
        words = line.split()
        if words[:1] == ["search"]:
            for entry in words[1:]:
                if entry.startswith("svc."):
                    return entry.removeprefix("svc.").rstrip(".")
            for entry in words[1:]:
                if ".svc." in entry:
                    return entry.split(".svc.", 1)[1].rstrip(".")
    return None
