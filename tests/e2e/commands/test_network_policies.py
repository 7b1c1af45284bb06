"""NetworkPolicies that would block a ktpy pod are said in one line (issue 15).

The bed's CNI bridge does not enforce NetworkPolicies, so these tests check the
warning and its absence, not the hang it warns of: the policies are real API
objects, read by ktpy as any cluster's would be.

All sessions of the module start side by side in one laptop, in two namespaces
(one whose policies block them, one whose policies let them in or may not be
listed), are ready, and stop together; each test then reads what its sessions
said. One start-up instead of one per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import (
    Bed,
    RunningKtpy,
    _new_laptop,
    _release_laptop,
    echo_manifest,
    local_server,
    new_namespace,
    run_ktpy,
    stop_together,
)

READY = "All looks good"
MESH_READY = "Now you can access your service by header"
PREVIEW_READY = "Now you can access your local service"
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
    """The warning lines of a session that has ended: its whole stderr, read to the end."""
    return [line for line in session.all_errors() if WARNING in line]


class Ended:
    """The module's sessions, each of which was ready and then stopped with Ctrl-C."""

    def __init__(self, blocked: str, allowing: str, sessions: dict[str, RunningKtpy]) -> None:
        self.blocked = blocked  # default-deny ingress, DNS-only egress
        self.allowing = allowing  # default-deny ingress, the port named http allowed
        self.sessions = sessions

    def said(self, *names: str) -> dict[str, list[str]]:
        return {name: warnings_of(self.sessions[name]) for name in names}


@pytest.fixture(scope="module")
def ended(bed: Bed) -> Iterator[Ended]:
    blocked, allowing = new_namespace(bed, "np-blocked"), new_namespace(bed, "np-allowing")
    laptop = _new_laptop("plain")
    try:
        # The echo pods only need to be there: no request goes through any session
        # (no client pod, no waiting for kube-proxy). Both namespaces roll out at once.
        for ns in (blocked, allowing):
            bed.apply(echo_manifest(), ns)
            bed.apply(ECHO_B, ns)
            bed.apply(DENY_INGRESS, ns)
        bed.apply(DENY_EGRESS, blocked)
        bed.apply(ALLOW_HTTP, allowing)  # lets the port named http in: echo's, not echo-b's
        bed.grant(allowing, "dev")  # ktbed-developer: no networkpolicies
        for ns in (blocked, allowing):
            bed.kubectl(
                "-n", ns, "rollout", "status", "deployment/echo", "--timeout=90s", timeout=100
            )
        local_server(laptop, 3001)
        # In blocked, each session's pod meets the same two policies.
        sessions = {
            "connect": run_ktpy(
                laptop, "-n", blocked, "connect", "--mode", "socks", "--socks-port", "2321"
            ),
            "exchange": run_ktpy(laptop, "-n", blocked, "exchange", "echo", "--expose", "3001:80"),
            "preview": run_ktpy(laptop, "-n", blocked, "preview", "mine", "--expose", "3001:8080"),
            "mesh": run_ktpy(
                laptop,
                "-n",
                blocked,
                "mesh",
                "echo-b",
                "--expose",
                "3001:9090",
                "--version-mark",
                "v1",
            ),
            # In allowing: echo's port is let in; echo-b's is blocked, but this user
            # cannot know: nothing guessed.
            "allowed": run_ktpy(laptop, "-n", allowing, "exchange", "echo", "--expose", "3001:80"),
            "unlisted": run_ktpy(
                laptop,
                "--debug",
                "-n",
                allowing,
                "exchange",
                "echo-b",
                "--expose",
                "3001:9090",
                user="dev",
            ),
        }
        ready = {"connect": READY, "preview": PREVIEW_READY, "mesh": MESH_READY}
        try:
            for name, session in sessions.items():
                session.wait_for(ready.get(name, READY), timeout=180)
        finally:
            codes = stop_together(list(sessions.values()))
        assert codes == [130] * len(sessions), [s.errors[-5:] for s in sessions.values()]
        yield Ended(blocked, allowing, sessions)
    finally:
        _release_laptop(laptop)
        for ns in (blocked, allowing):
            bed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_each_command_warns_of_the_policies_that_block_its_pod(ended: Ended) -> None:
    said = ended.said("connect", "exchange", "preview", "mesh")

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
    bed: Bed, ended: Ended
) -> None:
    can_list = bed.kubectl(
        "--as", "dev", "-n", ended.allowing, "auth", "can-i", "list", "networkpolicies",
        check=False,
    )  # fmt: skip
    assert can_list.stdout.strip() == "no"
    allowed, unlisted = ended.sessions["allowed"], ended.sessions["unlisted"]
    assert warnings_of(allowed) == [], allowed.errors
    assert warnings_of(unlisted) == [], unlisted.errors
    debug = [line for line in unlisted.errors if "may not list NetworkPolicies" in line]
    assert debug, unlisted.errors[-20:]
