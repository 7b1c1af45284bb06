"""Hostile input (issue 14, part 5): a table of bad command lines over every command
and flag, bad kubeconfigs and credentials. Each ends with one `Error:` line and a
hint, its own exit code (never 70, never a traceback), and changes nothing: the
laptop's routes, addresses, resolver and nft are compared before and after each
line (inside the laptop), the namespace's objects before and after the battery.

The lines run in one process inside a laptop (tests/e2e/hostile_input.py), as `dev`
with the developer role in the namespace, so that a line that got past the checks
could really change the cluster."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import Bed, Laptop
from tests.e2e.testbed import config

USAGE, CONFIG, UNREACHABLE, TIMEOUT = 2, 3, 10, 17
HUGE = "9" * 400
LONG_NAME = "a" * 64


def flag_cases(ns: str) -> list[tuple[str, list[str], int]]:
    """(id, arguments after `-n NS`, exit code)."""
    cases = [
        # names: over 63 characters, upper case, unicode, shell metacharacters
        ("exchange-long-name", ["exchange", LONG_NAME], USAGE),
        ("exchange-upper", ["exchange", "Echo"], USAGE),
        ("exchange-unicode", ["exchange", "écho"], USAGE),
        ("exchange-shell", ["exchange", "echo;rm -rf /"], USAGE),
        ("exchange-subst", ["exchange", "$(reboot)"], USAGE),
        ("mesh-upper", ["mesh", "ECHO"], USAGE),
        ("recover-shell", ["recover", "echo`id`"], USAGE),
        ("preview-long", ["preview", LONG_NAME, "--expose", "3001"], USAGE),
        ("preview-digit-first", ["preview", "1abc", "--expose", "3001"], USAGE),
        ("preview-unicode", ["preview", "prévu", "--expose", "3001"], USAGE),
        ("forward-upper", ["forward", "Echo", "8080:80"], USAGE),
        ("forward-bad-namespace", ["forward", "echo.Bad_NS", "8080:80"], USAGE),
        ("env-unicode", ["env", "deploy/ÄÖ"], USAGE),
        ("env-kind", ["env", "cronjob/x"], USAGE),
        ("env-shell", ["env", "deploy/x;id"], USAGE),
        ("env-container", ["env", "deploy/echo", "-c", "Bad Name"], USAGE),
        ("connect-dns-namespace", ["connect", "--mode", "socks", "--dns-namespace", "UP"], USAGE),
        # ports: 0, 65536, duplicates, huge
        ("exchange-port-0", ["exchange", "echo", "--expose", "0:80"], USAGE),
        ("exchange-port-65536", ["exchange", "echo", "--expose", "65536:80"], USAGE),
        ("exchange-remote-65536", ["exchange", "echo", "--expose", "3001:65536"], USAGE),
        ("exchange-dup-local", ["exchange", "echo", "--expose", "3001:80,3001:81"], USAGE),
        ("exchange-dup-remote", ["exchange", "echo", "--expose", "3001:80,3002:80"], USAGE),
        ("exchange-port-huge", ["exchange", "echo", "--expose", HUGE], USAGE),
        ("exchange-port-name", ["exchange", "echo", "--expose", "3001:HTTP"], USAGE),
        ("exchange-mode", ["exchange", "echo", "--mode", "both"], USAGE),
        ("mesh-port-0", ["mesh", "echo", "--expose", "0"], USAGE),
        ("mesh-dup", ["mesh", "echo", "--expose", "80,80"], USAGE),
        ("preview-port-65536", ["preview", "mine", "--expose", "65536"], USAGE),
        ("preview-remote-name", ["preview", "mine", "--expose", "3001:http"], USAGE),
        ("forward-port-0", ["forward", "echo", "0:80"], USAGE),
        ("forward-port-65536", ["forward", "echo", "8080:65536"], USAGE),
        ("forward-dup", ["forward", "echo", "8080", "other", "8080"], USAGE),
        ("forward-huge", ["forward", "echo", HUGE], USAGE),
        ("connect-socks-0", ["connect", "--mode", "socks", "--socks-port", "0"], USAGE),
        ("connect-socks-65536", ["connect", "--mode", "socks", "--socks-port", "65536"], USAGE),
        ("connect-socks-huge", ["connect", "--mode", "socks", "--socks-port", HUGE], USAGE),
        ("connect-mtu-huge", ["connect", "--mtu", HUGE], USAGE),
        ("connect-mtu-small", ["connect", "--mtu", "100"], USAGE),
        # CIDRs: host bits, IPv6, the laptop's own routes, everything, nonsense, huge
        ("connect-host-bits", ["connect", "--include-cidr", "10.96.0.1/12"], USAGE),
        ("connect-ipv6", ["connect", "--include-cidr", "fd00::/108"], USAGE),
        ("connect-own-route", ["connect", "--include-cidr", "10.251.0.0/16"], USAGE),
        ("connect-everything", ["connect", "--include-cidr", "0.0.0.0/0"], USAGE),
        ("connect-exclude-host-bits", ["connect", "--exclude-cidr", "10.0.0.1/8"], USAGE),
        ("connect-cidr-nonsense", ["connect", "--include-cidr", "10.300.0.0/16"], USAGE),
        ("connect-cidr-huge", ["connect", "--include-cidr", HUGE], USAGE),
        # version marks
        ("mesh-mark-upper", ["mesh", "echo", "--version-mark", "Blue"], USAGE),
        ("mesh-mark-key-upper", ["mesh", "echo", "--version-mark", "Key:blue"], USAGE),
        ("mesh-mark-no-key", ["mesh", "echo", "--version-mark", ":blue"], USAGE),
        ("mesh-mark-long", ["mesh", "echo", "--version-mark", "v:" + "a" * 21], USAGE),
        ("mesh-mark-shell", ["mesh", "echo", "--version-mark", "v:a;b"], USAGE),
        ("mesh-mark-unicode", ["mesh", "echo", "--version-mark", "vërsion:a"], USAGE),
        ("mesh-mode", ["mesh", "echo", "--mode", "istio"], USAGE),
        # durations and choices
        ("clean-threshold-huge", ["clean", "--threshold", HUGE + "h"], USAGE),
        ("clean-threshold-negative", ["clean", "--threshold", "-5s"], USAGE),
        ("clean-threshold-zero", ["clean", "--threshold", "0"], USAGE),
        ("status-output", ["status", "-o", "yaml"], USAGE),
        ("env-output", ["env", "deploy/echo", "-o", "xml"], USAGE),
        ("unknown-flag", ["exchange", "echo", "--bogus"], USAGE),
        # files: a directory for a file, a file for a directory
        ("exchange-env-file-dir", ["exchange", "echo", "--env-file", "/tmp"], USAGE),
        ("mesh-mount-dir-file", ["mesh", "echo", "--mount-dir", "/etc/hostname"], USAGE),
        ("env-env-file-dir", ["env", "deploy/echo", "--env-file", "/tmp"], USAGE),
    ]
    return [(case_id, ["-n", ns, *args], code) for case_id, args, code in cases]


GLOBAL_CASES: list[tuple[str, list[str], int]] = [
    ("namespace-long", ["-n", LONG_NAME, "status"], USAGE),
    ("namespace-upper", ["-n", "Default", "status"], USAGE),
    ("namespace-shell", ["-n", "a;b", "status"], USAGE),
    ("namespace-unicode", ["-n", "ñ", "status"], USAGE),
    ("image-shell", ["--image", "shadow;rm -rf /", "status"], USAGE),
    ("image-upper", ["--image", "Ghcr.io/KTPY/Shadow", "status"], USAGE),
    ("log-format", ["--log-format", "xml", "status"], USAGE),
    ("pod-timeout-huge", ["--podCreationTimeout", HUGE, "status"], USAGE),
    ("image-alias-shell", ["-i", "a b", "status"], USAGE),
    ("namespace-after-command", ["status", "-n", "Bad_NS"], USAGE),
]


def kubeconfig_with(bed: Bed, where: Path, name: str, **user: Any) -> str:
    """The dev kubeconfig with its user replaced, or its server moved."""
    body = yaml.safe_load(bed.kubeconfig("dev").read_text())
    if "server" in user:
        body["clusters"][0]["cluster"]["server"] = user.pop("server")
    if user:
        body["users"][0]["user"] = user
    path = where / name
    path.write_text(yaml.safe_dump(body))
    return str(path)


def plugin(command: str, *args: str) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": command,
                     "args": list(args), "interactiveMode": "Never"}}  # fmt: skip


def kubeconfig_cases(
    bed: Bed, ns: str, where: Path
) -> list[tuple[str, list[str], dict[str, str], int]]:
    malformed = where / "malformed.yaml"
    malformed.write_text("clusters: [\n")
    binary = where / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage\x80")
    return [
        ("kubeconfig-missing", {"KUBECONFIG": str(where / "missing.yaml")}, UNREACHABLE),
        ("kubeconfig-malformed", {"KUBECONFIG": str(malformed)}, CONFIG),
        ("kubeconfig-unreadable", {"KUBECONFIG": str(where)}, CONFIG),  # a directory
        ("kubeconfig-binary", {"KUBECONFIG": str(binary)}, CONFIG),
        ("kubeconfig-unknown-context", {"KTPY_CONTEXT": "nowhere"}, UNREACHABLE),
        ("api-unreachable", {"KUBECONFIG": kubeconfig_with(
            bed, where, "refused.yaml", server="https://127.0.0.1:9")}, UNREACHABLE),
        ("expired-credentials", {"KUBECONFIG": str(bed.kubeconfig("expired"))}, UNREACHABLE),
        ("plugin-fails", {"KUBECONFIG": kubeconfig_with(
            bed, where, "fails.yaml", **plugin("false"))}, UNREACHABLE),
        ("plugin-hangs", {"KUBECONFIG": kubeconfig_with(
            bed, where, "hangs.yaml", **plugin("sleep", "600"))}, UNREACHABLE),
        ("env-socks-port", {"KTPY_SOCKS_PORT": "65536"}, CONFIG),
        ("env-heartbeat-huge", {"KTPY_HEARTBEAT_INTERVAL": HUGE + "h"}, CONFIG),
        ("env-image", {"KTPY_IMAGE": "a b"}, CONFIG),
    ]  # fmt: skip


def namespace_objects(bed: Bed, namespace: str) -> list[tuple[str, str, str]]:
    body = bed.get_json("-n", namespace, "all,secrets,configmaps,roles,rolebindings")
    return sorted((i["kind"], i["metadata"]["name"], i["metadata"]["resourceVersion"])
                  for i in body["items"])  # fmt: skip


def test_hostile_input_is_one_line_with_its_own_code_and_changes_nothing(
    bed: Bed, namespace: str, laptop: Laptop, tmp_path: Path
) -> None:
    ns = namespace
    bed.grant(ns, "dev")
    home = tmp_path / "home"
    home.mkdir()
    # (SUDO_USER unset: under `sudo scripts/test` it would make ktpy act for that user)
    base = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "KUBECONFIG": str(bed.kubeconfig("dev")), "SUDO_USER": None}  # fmt: skip
    cases: list[tuple[str, list[str], dict[str, str | None], int]]
    cases = [(i, a, base, c) for i, a, c in [*flag_cases(ns), *GLOBAL_CASES]]
    cases += [(i, ["-n", ns, "status"], {**base, **env}, c)
              for i, env, c in kubeconfig_cases(bed, ns, tmp_path)]  # fmt: skip
    cases.append(("env-namespace", ["status"], {**base, "KTPY_NAMESPACE": "Bad_NS"}, CONFIG))
    cases.append(("flag-kubeconfig-missing",
                  ["--kubeconfig", str(tmp_path / "none.yaml"), "-n", ns, "status"], base,
                  UNREACHABLE))  # fmt: skip
    cases.append(("flag-context-unknown", ["--context", "nowhere", "-n", ns, "status"], base,
                  UNREACHABLE))  # fmt: skip
    expected = {case_id: code for case_id, _, _, code in cases}
    payload = json.dumps([{"id": i, "args": a, "env": e} for i, a, e, _ in cases])

    before = namespace_objects(bed, ns)
    # An API server whose packets are dropped (the laptop reaches only port 6443) takes
    # the connect timeouts (2 x 5s): run beside the battery, in a process of its own.
    dropped_config = kubeconfig_with(bed, tmp_path, "dropped.yaml",
                                     server=f"https://{config.NODE_IP}:6444")  # fmt: skip
    started = time.monotonic()
    dropped = laptop.popen(sys.executable, "-m", "ktpy", "-n", ns, "status",
                           env={"HOME": str(home), "KUBECONFIG": dropped_config})  # fmt: skip
    dropped_out: list[tuple[str, str]] = []
    ended: list[float] = []

    def read_dropped() -> None:
        dropped_out.append(dropped.communicate(timeout=30))
        ended.append(time.monotonic())

    reader = threading.Thread(target=read_dropped, daemon=True)
    reader.start()
    (tmp_path / "cases.json").write_text(payload)
    done = laptop.run(sys.executable, "-m", "tests.e2e.hostile_input",
                      str(tmp_path / "cases.json"), timeout=120)  # fmt: skip
    results = json.loads(done.stdout)
    reader.join(30)
    results.append({"id": "api-dropped", "code": dropped.returncode,
                    "stderr": dropped_out[0][1], "crash": "", "host_changes": [],
                    "seconds": round(ended[0] - started, 2)})  # fmt: skip
    expected["api-dropped"] = TIMEOUT
    # A kubeconfig its reader may not read (root reads every file: read as nobody).
    # Outside pytest's 0700 tree, which nobody could not even look into.
    shared = Path(tempfile.mkdtemp(prefix="ktpy-hostile-"))
    try:
        shared.chmod(0o755)
        private = shared / "private.yaml"
        private.write_text(bed.kubeconfig("dev").read_text())
        private.chmod(0o600)
        unreadable = laptop.run(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-m", "ktpy", "--kubeconfig", str(private), "-n", ns, "status",
            check=False, env={"HOME": "/tmp"},
        )  # fmt: skip
    finally:
        shutil.rmtree(shared)
    results.append({"id": "kubeconfig-not-readable", "code": unreadable.returncode,
                    "stderr": unreadable.stderr, "crash": "", "host_changes": [],
                    "seconds": 0})  # fmt: skip
    expected["kubeconfig-not-readable"] = CONFIG
    assert namespace_objects(bed, ns) == before

    problems = []
    for result in results:
        case_id, stderr = result["id"], result["stderr"]
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        hinted = "\nHint: " in stderr or "Try 'ktpy" in stderr
        why = []
        if result["code"] != expected[case_id]:
            why.append(f"exit {result['code']}, expected {expected[case_id]}")
        if result["crash"] or "Traceback" in stderr:
            why.append("a traceback")
        if len(errors) != 1 or len(errors[0]) > 400 or " object at 0x" in errors[0]:
            why.append(f"{len(errors)} Error lines")
        if not hinted:
            why.append("no hint")
        if result["host_changes"]:
            why.append(f"the laptop changed: {result['host_changes'][:6]}")
        # bounded: two connect timeouts of 5s (and a Python start on a busy machine)
        if result["seconds"] > (20 if case_id == "api-dropped" else 5):
            why.append(f"took {result['seconds']}s")
        if why:
            problems.append(f"{case_id}: {'; '.join(why)}: {stderr.strip()[-300:]}")
    assert len(results) == len(cases) + 2
    assert not problems, "\n".join(problems)
