"""NetworkPolicies that would block a ktpy pod are said in one line (issue 15).

The bed's CNI bridge does not enforce NetworkPolicies, so these tests check the
warning and its absence, not the hang it warns of: the policies are real API
objects, read by ktpy as any cluster's would be."""

from __future__ import annotations

import time

from tests.e2e.conftest import Bed, Laptop, RunningKtpy, local_server, run_ktpy

READY = "All looks good"
MESH_READY = "Now you can access your service by header"
WARNING = "Warning: NetworkPolic"

DENY_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""
ALLOW_HTTP = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
"""
DENY_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"""


# A second Service on the echo pods, by port number (not the name "http"): one
# Service per session, without another Deployment to wait for.
ECHO_B = """
apiVersion: v1
kind: Service
metadata: {name: echo-b}
spec:
  selector: {app: echo}
  ports:
  - {name: alt, port: 9090, targetPort: 9090}
"""


def warnings_of(session: RunningKtpy) -> list[str]:
    # The warnings come before the ready line, which wait_for has seen; stderr
    # is read by another thread: give it the moment the ready line took.
    time.sleep(0.3)
    return [line for line in session.errors if WARNING in line]


def stop_all(sessions: list[RunningKtpy]) -> None:
    codes = [s.stop() for s in sessions]
    assert codes == [130] * len(sessions), [s.errors[-5:] for s in sessions]


def test_each_command_warns_of_the_policies_that_block_its_pod(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    bed.apply(ECHO_B, ns)
    bed.apply(DENY_INGRESS, ns)
    bed.apply(DENY_EGRESS, ns)
    local_server(laptop, 3001)
    # Side by side: each session's pod meets the same two policies.
    connect = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2321")
    exchange = run_ktpy(laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80")
    preview = run_ktpy(laptop, "-n", ns, "preview", "mine", "--expose", "3001:8080")
    mesh = run_ktpy(
        laptop, "-n", ns, "mesh", "echo-b", "--expose", "3001:9090", "--version-mark", "v1"
    )
    sessions = [connect, exchange, preview, mesh]
    try:
        connect.wait_ready(timeout=180)
        exchange.wait_for(READY, timeout=180)
        preview.wait_for("Now you can access your local service", timeout=180)
        mesh.wait_for(MESH_READY, timeout=180)
        said = {
            name: warnings_of(s)
            for name, s in zip(("connect", "exchange", "preview", "mesh"), sessions, strict=True)
        }
    finally:
        stop_all(sessions)

    # connect: egress only to DNS; the ingress policy is not its concern.
    assert len(said["connect"]) == 1, said
    assert "NetworkPolicy dns-only select pod" in said["connect"][0]
    assert "allow no egress to any port/TCP" in said["connect"][0]
    assert "53" not in said["connect"][0]  # DNS is allowed: not named

    # exchange and preview: called on their ports, which nothing lets in.
    assert len(said["exchange"]) == 1, said
    line = said["exchange"][0]
    assert "NetworkPolicy default-deny select pod echo-kt-" in line
    assert "allow no ingress to port 8080/TCP" in line
    assert "Hint: allow them for pods labelled app.kubernetes.io/managed-by=ktpy" in line
    assert len(said["preview"]) == 1, said
    assert "select pod mine-kt-" in said["preview"][0]
    assert "ingress to port 8080/TCP" in said["preview"][0]

    # mesh: its shadow (called by the router) and the router (called by everyone,
    # calling the Service's pods), both directions blocked for the router.
    assert len(said["mesh"]) == 2, said
    shadow = [line for line in said["mesh"] if "echo-b-kt-router" not in line]
    router = [line for line in said["mesh"] if "select pod echo-b-kt-router-" in line]
    assert len(shadow) == 1, said["mesh"]
    assert "ingress to port 9090/TCP" in shadow[0]
    assert len(router) == 1, said["mesh"]
    assert "ingress to port 9090/TCP, egress to port 9090/TCP" in router[0]


def test_silence_when_the_port_is_allowed_or_policies_may_not_be_listed(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    bed.apply(ECHO_B, ns)
    bed.apply(DENY_INGRESS, ns)
    bed.apply(ALLOW_HTTP, ns)  # lets the port named http in: echo's, not echo-b's
    bed.grant(ns, "dev")  # ktbed-developer: no networkpolicies
    can_list = bed.kubectl(
        "--as", "dev", "-n", ns, "auth", "can-i", "list", "networkpolicies", check=False
    )
    assert can_list.stdout.strip() == "no"
    local_server(laptop, 3001)
    allowed = run_ktpy(laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80")
    # echo-b's port is blocked, but this user cannot know: nothing guessed.
    unlisted = run_ktpy(
        laptop, "--debug", "-n", ns, "exchange", "echo-b", "--expose", "3001:9090", user="dev"
    )
    try:
        allowed.wait_for(READY, timeout=180)
        unlisted.wait_for(READY, timeout=180)
        assert warnings_of(allowed) == [], allowed.errors
        assert warnings_of(unlisted) == [], unlisted.errors
        debug = [line for line in unlisted.errors if "may not list NetworkPolicies" in line]
        assert debug, unlisted.errors[-20:]
    finally:
        stop_all([allowed, unlisted])
