"""`ktpy mesh` end to end (issue 12): only requests carrying a developer's header
reach that developer's laptop; everyone else still reaches the Service's pods.

A client pod calls the echo Service (port 80, named target port ``http``) with
and without the header; each laptop runs a local server answering with its
own name."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.e2e.commands.test_exchange import service_text
from tests.e2e.conftest import Bed, Laptop, RunningKtpy, local_server, run_ktpy

READY = "Now you can access your service by header"


def curl(bed: Bed, namespace: str, url: str, *headers: str) -> subprocess.CompletedProcess[str]:
    args = [a for h in headers for a in ("-H", h)]
    return bed.kubectl(
        "-n", namespace, "exec", "client", "--",
        "curl", "-sS", "--max-time", "5", *args, url,
        check=False,
    )  # fmt: skip


def who(bed: Bed, namespace: str, *headers: str, url: str = "http://echo/") -> str:
    result = curl(bed, namespace, url, *headers)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["pod"])


def mesh(laptop: Laptop, namespace: str, *args: str) -> RunningKtpy:
    return run_ktpy(laptop, "-n", namespace, "mesh", "echo", *args)


def ktpy_objects(bed: Bed, namespace: str) -> list[str]:
    return bed.ktpy_objects(namespace)


def test_the_seed_scenario_header_to_the_laptop_the_rest_to_the_pods(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001, "laptop")
    session = mesh(laptop, ns, "--expose", "3001:80", "--version-mark", "foobar")
    try:
        lines = session.wait_for(READY, timeout=180)
        assert "Now you can access your service by header 'VERSION: foobar'" in lines[-1]
        # The header in any case reaches the laptop; no header, or another value, the pods.
        assert who(bed, ns, "VERSION: foobar") == "laptop"
        assert who(bed, ns, "version: foobar") == "laptop"
        for _ in range(5):
            assert who(bed, ns).startswith("echo-")
            assert who(bed, ns, "VERSION: other").startswith("echo-")
        # The Service selects the router; stuntman and router exist beside it.
        spec = bed.get_json("-n", ns, "service", "echo")["spec"]
        assert spec["selector"] == {"ktpy.dev/role": "router", "ktpy.dev/mesh-of": "echo"}
        names = bed.kubectl("-n", ns, "get", "service", "-o", "name").stdout.split()
        assert {"service/echo-kt-stuntman", "service/echo-kt-mesh-foobar"} <= set(names)
    finally:
        code = session.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert code == 130, session.errors
    ending = session.all_errors()[-1]
    assert ending.startswith("Stopped by Ctrl-C after "), session.errors
    assert "removed the route VERSION: foobar" in ending
    assert "restored the selector of service echo" in ending
    # The last one out: the Service as it was, byte for byte, and nothing of ktpy left.
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []
    assert who(bed, ns, "VERSION: foobar").startswith("echo-")


def test_bad_values_and_an_unknown_service_change_nothing(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    cases = [
        (("mesh", "echo", "--version-mark", "Foo_Bar"), 2, "--version-mark"),
        (("mesh", "echo", "--version-mark", "x" * 40), 2, "--version-mark"),
        (("mesh", "nope", "--version-mark", "a"), 12, "nope"),
        (("mesh", "echo", "--expose", "3001:81"), 13, "81"),
    ]
    for args, code, word in cases:
        result = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, *args, check=False, timeout=60)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == code, (args, result.stderr)
        assert len(errors) == 1, (args, result.stderr)
        assert word in errors[0], (args, errors)
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []
