"""Least privilege (issue 14, part 4): the developer `dev` gets exactly one Role of
docs/rbac/ in the test's namespace and runs that command to its end; the API calls
ktpy records (``--debug``) are then held against the Role: every call allowed, every
rule used (minimal), rules named "sometimes used" aside. A Role short of one rule ends
the command with one line naming the verb and resource, and nothing changed."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Bed, Laptop, RunningKtpy, local_server, run_ktpy
from tests.rbac import RBAC_DIR, Call, load_role, recorded_calls

# Beats often, so that a short run also makes the heartbeat's calls.
FAST = {"KTPY_HEARTBEAT_INTERVAL": "500ms", "KTPY_STALE_AFTER": "2s"}
DEBUG = ("--debug", "--log-format", "json")


@contextlib.contextmanager
def granted(bed: Bed, namespace: str, command: str) -> Iterator[None]:
    """`dev` holds docs/rbac/<command>.yaml in namespace, and nothing else, inside."""
    role = load_role(command)
    bed.kubectl("-n", namespace, "apply", "-f", str(RBAC_DIR / f"{command}.yaml"))
    binding = f"dev-{role.name}"
    bed.kubectl("-n", namespace, "create", "rolebinding", binding,
                f"--role={role.name}", "--user=dev")  # fmt: skip
    effective(bed, namespace, min(a for a in role.rules if "/" not in a[1]))
    try:
        yield
    finally:
        bed.kubectl("-n", namespace, "delete", "rolebinding", binding, "--wait=false")


def effective(bed: Bed, namespace: str, access: tuple[str, str], timeout: float = 10) -> None:
    """Wait until the API server's authorizer has seen a new binding (its cache lags)."""
    verb, resource = access
    deadline = time.monotonic() + timeout
    while bed.kubectl("-n", namespace, "auth", "can-i", verb, resource,
                      "--as=dev", check=False).stdout.strip() != "yes":  # fmt: skip
        assert time.monotonic() < deadline, f"the binding never allowed {access}"
        time.sleep(0.1)


def check_minimal(
    command: str,
    calls: list[Call],
    *,
    allowed_refusals: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
) -> None:
    role = load_role(command)
    used = {c.access for c in calls if c.status != 403}
    refused = {c.access for c in calls if c.status == 403}
    assert refused <= allowed_refusals, f"{command}: refused {refused - allowed_refusals}"
    assert used <= role.rules, f"{command}: used beyond the Role: {used - role.rules}"
    unused = role.rules - role.sometimes_used - used
    assert not unused, f"{command}: rules of the Role never used: {sorted(unused)}"


def called(session: RunningKtpy, access: tuple[str, str], count: int = 1,
           timeout: float = 20) -> None:  # fmt: skip
    """Wait until the running command has made the call `access` `count` times."""
    deadline = time.monotonic() + timeout
    while True:
        made = [c for c in recorded_calls(list(session.errors)) if c.access == access]
        if len(made) >= count:
            return
        assert time.monotonic() < deadline, f"no {access}: {session.errors[-5:]}"
        time.sleep(0.1)


def beats(session: RunningKtpy) -> None:
    """Wait until the shadow pod's heartbeat was written twice (one full beat of every
    object, and the hooks after it, lies between two)."""
    called(session, ("patch", "pods"), 2)


def run_session(
    laptop: Laptop,
    namespace: str,
    command: str,
    *args: str,
    ready: str = "All looks good",
    stop: int = signal.SIGINT,
) -> list[Call]:
    session = run_ktpy(laptop, *DEBUG, "-n", namespace, *args, user="dev", env=FAST)
    try:
        session.wait_for(ready, 90)
        beats(session)
    finally:
        code = session.stop(stop)
    assert code == (130 if stop == signal.SIGINT else -9), session.errors[-10:]
    return recorded_calls(session.all_errors())


def run_once(laptop: Laptop, namespace: str, *args: str) -> list[Call]:
    done = laptop.run(sys.executable, "-m", "ktpy", *DEBUG, "-n", namespace, *args,
                      user="dev", check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return recorded_calls(done.stderr.splitlines())


def ranges_role() -> set:
    return set(load_role("connect-ranges").rules)


def test_connect_and_status_run_with_exactly_their_roles(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    ns = namespace
    with granted(bed, ns, "connect"):
        session = run_ktpy(laptop, *DEBUG, "-n", ns, "connect", user="dev", env=FAST)
        try:
            lines = session.wait_ready(90)
            beats(session)
        finally:
            assert session.stop() == 130
        calls = recorded_calls(session.all_errors())
    # Degraded without the ClusterRole, and said so once.
    notes = [line for line in lines if "connect-ranges" in line]
    assert len(notes) == 1, lines
    # What was refused is exactly the ClusterRole's rules (and the range probe the
    # ServiceCIDRs make unnecessary): the ClusterRole is minimal too.
    refused = {c.access for c in calls if c.status == 403}
    # (The watch of namespaces follows their list, so it is never tried here.)
    assert refused == (ranges_role() - {("watch", "namespaces")}) | {("create", "services")}
    check_minimal("connect", calls, allowed_refusals=refused)

    with granted(bed, ns, "status"):
        check_minimal("status", run_once(laptop, ns, "status"))
    assert bed.ktpy_objects(ns) == []


# Binds a ClusterRole to dev for every namespace: not beside other suites' dev.
@pytest.mark.fault_matrix_full
def test_with_the_cluster_role_connect_reads_the_real_ranges_and_no_more(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    ns = namespace
    binding = f"dev-ktpy-connect-ranges-{ns}"
    bed.kubectl("apply", "-f", str(RBAC_DIR / "connect-ranges.yaml"))
    bed.kubectl("create", "clusterrolebinding", binding, "--clusterrole=ktpy-connect-ranges",
                "--user=dev")  # fmt: skip
    try:
        with granted(bed, ns, "connect"):
            effective(bed, ns, ("list", "nodes"))
            session = run_ktpy(laptop, *DEBUG, "-n", ns, "connect", user="dev", env=FAST)
            try:
                lines = session.wait_ready(90)
                called(session, ("watch", "namespaces"))
            finally:
                assert session.stop() == 130
            calls = recorded_calls(session.all_errors())
    finally:
        bed.kubectl("delete", "clusterrolebinding", binding, "--wait=false")
    assert not [line for line in lines if "connect-ranges" in line], lines
    assert any("(from ServiceCIDR objects)" in line for line in lines), lines
    assert any("(from the Nodes' spec.podCIDRs)" in line for line in lines), lines
    assert not [c for c in calls if c.status == 403]
    used = {c.access for c in calls}
    # Every rule of the ClusterRole used; the Role's as before.
    assert load_role("connect-ranges").rules <= used
    assert used <= load_role("connect").rules | load_role("connect-ranges").rules


@pytest.mark.fault_matrix_full  # the other commands' Roles: CI budget
def test_the_other_commands_run_with_exactly_their_roles(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    server = local_server(laptop, 3001)
    try:
        with granted(bed, ns, "exchange"):
            check_minimal("exchange", run_session(laptop, ns, "exchange", "exchange", "echo",
                                                  "--expose", "3001:80"))  # fmt: skip
        with granted(bed, ns, "env"):
            calls = run_once(laptop, ns, "env", "deploy/echo", "-o", "json")
            # The kubernetes Service's link variables come from namespace default, which
            # a namespace's Role does not reach: left out, as the pod's own are there.
            assert {(c.access, c.namespace) for c in calls if c.status == 403} == {
                (("get", "services"), "default")
            }
            check_minimal("env", calls, allowed_refusals={("get", "services")})
        with granted(bed, ns, "exchange-scale"):
            calls = run_session(laptop, ns, "exchange", "exchange", "echo", "--expose", "3001:80",
                                "--mode", "scale")  # fmt: skip
            check_minimal("exchange-scale", calls)
        with granted(bed, ns, "mesh"):
            calls = run_session(laptop, ns, "mesh", "mesh", "echo", "--expose", "3001:80",
                                ready="Now you can access")  # fmt: skip
            check_minimal("mesh", calls)
        with granted(bed, ns, "forward"):
            check_minimal("forward", run_session(laptop, ns, "forward", "forward", "echo",
                                                 "8080:80"))  # fmt: skip
        with granted(bed, ns, "preview"):
            check_minimal("preview", run_session(laptop, ns, "preview", "preview", "mine",
                                                 "--expose", "3001:80",
                                                 ready="Now you can access"))  # fmt: skip
        # A crashed exchange, put back by recover.
        with granted(bed, ns, "exchange"):
            run_session(laptop, ns, "exchange", "exchange", "echo", "--expose", "3001:80",
                        stop=signal.SIGKILL)  # fmt: skip
        with granted(bed, ns, "recover"):
            check_minimal("recover", run_once(laptop, ns, "recover", "echo"))
        # A crashed scale-mode exchange and preview, swept by clean.
        with granted(bed, ns, "exchange-scale"):
            run_session(laptop, ns, "exchange", "exchange", "echo", "--expose", "3001:80",
                        "--mode", "scale", stop=signal.SIGKILL)  # fmt: skip
        with granted(bed, ns, "preview"):
            run_session(laptop, ns, "preview", "preview", "mine", "--expose", "3001:80",
                        ready="Now you can access", stop=signal.SIGKILL)  # fmt: skip
        with granted(bed, ns, "clean"):
            check_minimal("clean", run_once(laptop, ns, "clean"))
    finally:
        server.kill()
    assert bed.ktpy_objects(ns) == []


def namespace_snapshot(bed: Bed, namespace: str) -> str:
    """The namespace's objects ktpy could touch, without what the server changes by itself."""
    body = bed.get_json("-n", namespace, "pods,services,secrets,deployments,configmaps")
    items = []
    for item in body["items"]:
        meta = item["metadata"]
        items.append((item["kind"], meta["name"], meta.get("uid"), meta.get("resourceVersion")))
    return repr(sorted(items))


def test_a_role_short_of_one_rule_ends_with_one_line_naming_it_and_changes_nothing(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    ns = namespace
    role = RBAC_DIR / "preview.yaml"
    short = role.read_text().replace(
        "verbs: [get, create, patch, delete]", "verbs: [get, patch, delete]"
    )
    assert short != role.read_text()
    bed.kubectl("-n", ns, "apply", "-f", "-", input=short)
    bed.kubectl("-n", ns, "create", "rolebinding", "dev-short", "--role=ktpy-preview",
                "--user=dev")  # fmt: skip
    effective(bed, ns, ("get", "services"))
    before = namespace_snapshot(bed, ns)
    done = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "preview", "mine",
                      "--expose", "3001:80", user="dev", check=False, timeout=90)  # fmt: skip
    assert done.returncode == 11, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: not allowed to create services in namespace '{ns}'"], done.stderr
    assert "Traceback" not in done.stderr
    assert any(line.startswith("Hint: ") and "docs/rbac/" in line
               for line in done.stderr.splitlines())  # fmt: skip
    # The shadow pod made before the refused Service is gone again; nothing else changed.
    assert bed.ktpy_objects(ns) == []
    assert namespace_snapshot(bed, ns) == before
