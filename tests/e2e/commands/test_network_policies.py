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


def warnings_of(session: RunningKtpy) -> list[str]:
    # The warnings come before the ready line, which wait_for has seen; stderr
    # is read by another thread: give it the moment the ready line took.
    time.sleep(0.3)
    return [line for line in session.errors if WARNING in line]


def stopped(session: RunningKtpy) -> None:
    assert session.stop() == 130, session.errors[-5:]


def test_exchange_warns_of_a_default_deny_and_not_once_the_port_is_allowed(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    bed.apply(DENY_INGRESS, echo)
    local_server(laptop, 3001)
    blocked = run_ktpy(laptop, "-n", echo, "exchange", "echo", "--expose", "3001:80")
    try:
        blocked.wait_for(READY, timeout=120)
        lines = warnings_of(blocked)
    finally:
        stopped(blocked)
    assert len(lines) == 1, blocked.errors
    assert "NetworkPolicy default-deny select pod echo-kt-" in lines[0]
    assert "allow no ingress to port 8080/TCP" in lines[0]
    assert "Hint: allow them for pods labelled app.kubernetes.io/managed-by=ktpy" in lines[0]

    # The same policy, and another that lets the named port in: nothing to say.
    bed.apply(ALLOW_HTTP, echo)
    allowed = run_ktpy(laptop, "-n", echo, "exchange", "echo", "--expose", "3001:80")
    try:
        allowed.wait_for(READY, timeout=120)
        assert warnings_of(allowed) == [], allowed.errors
    finally:
        stopped(allowed)


def test_connect_warns_of_egress_limited_to_dns(bed: Bed, namespace: str, laptop: Laptop) -> None:
    bed.apply(DENY_EGRESS, namespace)
    session = run_ktpy(
        laptop, "-n", namespace, "connect", "--mode", "socks", "--socks-port", "2321"
    )
    try:
        session.wait_ready(timeout=120)
        lines = warnings_of(session)
    finally:
        stopped(session)
    assert len(lines) == 1, session.errors
    assert "NetworkPolicy dns-only select pod" in lines[0]
    assert "allow no egress to any port/TCP" in lines[0]
    assert "53" not in lines[0]  # DNS is allowed: not named


def test_preview_and_mesh_warn_for_their_pods(bed: Bed, echo: str, laptop: Laptop) -> None:
    bed.apply(DENY_INGRESS, echo)
    local_server(laptop, 3001)
    preview = run_ktpy(laptop, "-n", echo, "preview", "mine", "--expose", "3001:8080")
    try:
        preview.wait_for("Now you can access your local service", timeout=120)
        lines = warnings_of(preview)
    finally:
        stopped(preview)
    assert len(lines) == 1, preview.errors
    assert "select pod mine-kt-" in lines[0]
    assert "ingress to port 8080/TCP" in lines[0]

    mesh = run_ktpy(
        laptop, "-n", echo, "mesh", "echo", "--expose", "3001:80", "--version-mark", "v1"
    )
    try:
        mesh.wait_for(MESH_READY, timeout=180)
        lines = warnings_of(mesh)
    finally:
        stopped(mesh)
    # The shadow pod (called by the router) and the router (called by everyone).
    assert len(lines) == 2, mesh.errors
    assert any("ingress to port 8080/TCP" in line and "-kt-router" not in line for line in lines)
    assert any("select pod echo-kt-router-" in line for line in lines), lines


def test_a_user_who_may_not_list_policies_hears_nothing_of_them(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    bed.apply(DENY_INGRESS, echo)
    bed.grant(echo, "dev")  # ktbed-developer: no networkpolicies
    assert (
        bed.kubectl(
            "--as", "dev", "-n", echo, "auth", "can-i", "list", "networkpolicies", check=False
        ).stdout.strip()
        == "no"
    )
    local_server(laptop, 3001)
    session = run_ktpy(
        laptop, "--debug", "-n", echo, "exchange", "echo", "--expose", "3001:80", user="dev"
    )
    try:
        session.wait_for(READY, timeout=120)
        assert warnings_of(session) == [], session.errors
        assert any("may not list NetworkPolicies" in line for line in session.errors), (
            session.errors[-20:]
        )
    finally:
        stopped(session)
