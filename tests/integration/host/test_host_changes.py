"""ktpy's host changes in a laptop-like namespace: they take effect, and the laptop
comes back exactly as it was after an orderly stop and after kill -9 + clean --local.

Each test runs ``python -m ktpy.host``, the same functions ``ktpy connect`` and
``ktpy clean --local`` call, inside its own laptop (numbers 56..63).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktpy.host import snapshot
from tests.integration.host.conftest import Laptop, MakeLaptop

pytestmark = [pytest.mark.integration, pytest.mark.root]

SESSION = "hostit01"
TUN = f"ktpy-{SESSION}"
TUN_ADDRESS = "169.254.0.1"
SERVICES = "10.96.0.0/16"
PODS = "10.244.0.0/16"
API = "10.96.0.1"  # inside the service range: it must be cut out
CONNECT_ARGS = (
    "--range", SERVICES, "--range", PODS, "--api", API,
    "--domain", "cluster.local", "--domain", "default",
)  # fmt: skip


def assert_same(before: snapshot.Snapshot, after: snapshot.Snapshot) -> None:
    difference = snapshot.diff(before, after)
    assert difference == [], "\n".join(difference)


def assert_connected(laptop: Laptop) -> None:
    """Routes through the TUN device, the API server off it, resolver pointed at ktpy."""
    by_dst = {r["dst"]: r for r in laptop.routes()}
    assert by_dst[PODS]["dev"] == TUN
    assert by_dst[PODS]["prefsrc"] == TUN_ADDRESS
    assert by_dst["10.96.128.0/17"]["dev"] == TUN
    api_path = laptop.run("ip", "-o", "route", "get", API).stdout
    assert " dev eth0 " in api_path, api_path
    service_path = laptop.run("ip", "-o", "route", "get", "10.96.0.10").stdout
    assert f" dev {TUN} " in service_path, service_path
    link = laptop.run("ip", "-o", "addr", "show", "dev", TUN).stdout
    assert f"inet {TUN_ADDRESS}/32" in link
    if laptop.flavour == "plain":
        resolv = laptop.run("cat", "/etc/resolv.conf").stdout.splitlines()
        assert resolv[0].startswith(f"# ktpy session {SESSION} begin")
        assert resolv[1] == f"nameserver {TUN_ADDRESS}"
        assert resolv[3:] == ["nameserver 10.250.0.1"]  # the original, untouched
    else:
        status = laptop.run("resolvectl", "status", TUN).stdout
        assert f"DNS Servers: {TUN_ADDRESS}" in status, status
        assert "DNS Domain: ~cluster.local ~default" in status, status
        assert "-DefaultRoute" in status, status
        # Global settings and the other link are untouched.
        assert "nameserver 127.0.0.53" in laptop.run("cat", "/etc/resolv.conf").stdout.splitlines()


@pytest.mark.parametrize(("number", "flavour"), [(56, "plain"), (57, "resolved")])
def test_connect_then_stop_leaves_the_laptop_as_it_was(
    make_laptop: MakeLaptop, tmp_path: Path, number: int, flavour: str
) -> None:
    laptop = make_laptop(number, flavour)
    before = laptop.snapshot()
    running = laptop.connect(tmp_path, SESSION, *CONNECT_ARGS)
    assert running.ready["resolver"] == (
        "resolv.conf" if flavour == "plain" else "systemd-resolved"
    )
    assert running.ready["upstreams"] == ["10.250.0.1"]
    assert running.ready["skipped"] == []
    assert_connected(laptop)
    assert snapshot.diff(before, laptop.snapshot()) != []
    journal = tmp_path / f"{SESSION}.journal"
    # The pid as the laptop numbers it: the laptop has a PID namespace of its own.
    assert f'"pid":{running.process.namespace_pid()},' in journal.read_text()

    report = running.stop(signal.SIGTERM)
    assert report["failures"] == []
    assert report["removed"] is True
    assert running.process.returncode == 0
    assert not journal.exists()
    assert_same(before, laptop.snapshot())


@pytest.mark.parametrize(("number", "flavour"), [(58, "plain"), (59, "resolved")])
def test_kill_9_then_clean_local_leaves_the_laptop_as_it_was(
    make_laptop: MakeLaptop, tmp_path: Path, number: int, flavour: str
) -> None:
    laptop = make_laptop(number, flavour)
    before = laptop.snapshot()
    running = laptop.connect(tmp_path, SESSION, *CONNECT_ARGS)
    assert_connected(laptop)
    running.stop(signal.SIGKILL)
    journal = tmp_path / f"{SESSION}.journal"
    assert journal.exists()
    if flavour == "plain":
        # What a kill -9 leaves behind: the device went with the process, the file stays.
        assert f"nameserver {TUN_ADDRESS}" in laptop.run("cat", "/etc/resolv.conf").stdout

    done = laptop.ktpy_host("clean-local", "--journal-dir", str(tmp_path))
    assert f"session {SESSION}: host changes all undone" in done.stdout
    assert not journal.exists()
    assert_same(before, laptop.snapshot())
    # A second clean finds nothing to do.
    assert laptop.ktpy_host("clean-local", "--journal-dir", str(tmp_path)).stdout == ""


def test_an_overlapping_route_is_skipped_and_left_untouched(
    make_laptop: MakeLaptop, tmp_path: Path
) -> None:
    laptop = make_laptop(60, "plain")
    gateway = f"10.251.{laptop.number}.1"
    # A corporate VPN's route that covers part of the pod range.
    laptop.run("ip", "route", "add", "10.244.0.0/20", "via", gateway, "dev", "eth0")
    vpn_route = laptop.run("ip", "route", "show", "10.244.0.0/20").stdout
    before = laptop.snapshot()
    running = laptop.connect(tmp_path, SESSION, *CONNECT_ARGS)
    assert running.ready["skipped"] == [
        f"not routing {PODS}: it overlaps the host's route 10.244.0.0/20 via {gateway} dev eth0"
        " (a VPN or local network?); use force to route it anyway"
    ]
    by_dst = {r["dst"]: r for r in laptop.routes()}
    assert PODS not in by_dst
    assert by_dst["10.96.128.0/17"]["dev"] == TUN
    assert laptop.run("ip", "route", "show", "10.244.0.0/20").stdout == vpn_route
    running.stop()
    after = laptop.snapshot()
    assert_same(before, after)
    assert "10.244.0.0/20 via" in after.sections["ip -4 route table all"]


def test_clean_local_leaves_a_live_session_alone(make_laptop: MakeLaptop, tmp_path: Path) -> None:
    laptop = make_laptop(61, "plain")
    before = laptop.snapshot()
    running = laptop.connect(tmp_path, SESSION, *CONNECT_ARGS)
    journal = tmp_path / f"{SESSION}.journal"
    recorded = journal.read_bytes()
    connected = laptop.snapshot()

    done = laptop.ktpy_host("clean-local", "--journal-dir", str(tmp_path))
    pid = running.process.namespace_pid()
    assert done.stdout.startswith(f"session {SESSION} (pid {pid} on {laptop.name}, start tick")
    assert done.stdout.endswith("): still running, left alone\n")
    assert journal.read_bytes() == recorded
    assert_same(connected, laptop.snapshot())
    assert_connected(laptop)

    running.stop()
    assert_same(before, laptop.snapshot())


RESPONDER = """
import sys, socket
from dnslib import DNSRecord, RR, A, QTYPE, RCODE
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("listening", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    query = DNSRecord.parse(data)
    name = str(query.q.qname)
    print(name, QTYPE[query.q.qtype], flush=True)
    reply = query.reply()
    if name.endswith(".cluster.local.") and query.q.qtype == QTYPE.A:
        reply.add_answer(RR(name, QTYPE.A, rdata=A("10.96.0.42"), ttl=5))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    sock.sendto(reply.pack(), peer)
"""


@pytest.mark.parametrize(("number", "flavour"), [(62, "plain"), (63, "resolved")])
def test_cluster_names_reach_ktpys_server_and_other_names_do_not(
    make_laptop: MakeLaptop, tmp_path: Path, number: int, flavour: str
) -> None:
    """The resolver settings work end to end: a stand-in for ktpy's DNS server on the
    TUN address gets the cluster name. With systemd-resolved (per-link server bound
    to the TUN link, routing domains only) it never sees any other name."""
    laptop = make_laptop(number, flavour)
    running = laptop.connect(tmp_path, SESSION, *CONNECT_ARGS)
    script = tmp_path / "responder.py"
    script.write_text(RESPONDER)
    responder = subprocess.Popen(
        laptop.command(sys.executable, str(script), TUN_ADDRESS),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout is not None
        assert responder.stdout.readline() == "listening\n"
        found = laptop.run("getent", "ahostsv4", "echo.default.svc.cluster.local", check=False)
        assert "10.96.0.42" in found.stdout, found
        # A name outside every routing domain (the bed resolver may not even be up).
        laptop.run("timeout", "5", "getent", "hosts", "www.example.org", check=False)
        time.sleep(0.5)
    finally:
        responder.terminate()
        out, _ = responder.communicate(timeout=10)
    asked = out.splitlines()
    assert "echo.default.svc.cluster.local. A" in asked
    if flavour == "resolved":
        assert not any("example.org" in line for line in asked), asked
    running.stop()
