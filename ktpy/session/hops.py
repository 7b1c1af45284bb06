"""Each hop of a running session's path, measured from this machine (``ktpy doctor``).

    this machine -> API server -> kubelet -> shadow pod   port-forward
    SSH in the shadow pod (sshd)                          ssh
    shadow pod -> the target Service                      target
    shadow pod's dnsmasq -> the cluster's DNS             dns

Hops nest: a round trip through the SSH session also crosses the port-forward.
So each hop's own share is its round trip minus the one beneath it (the target's
connect is an SSH channel to the Service minus an SSH channel to sshd itself),
timed in turn so the path's jitter falls on both, and a slow hop shows in its
own figure, not in every one above it. Round trips
are measured first, throughput last: bytes a slowed link still holds queued
would otherwise delay the round trips after them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from dnslib import QTYPE, RCODE, DNSRecord

from ktpy.cluster.api import ClusterApi
from ktpy.net import probe
from ktpy.net.dns_server import TcpExchange
from ktpy.net.probe import RoundTrips, Throughput
from ktpy.session import Session
from ktpy.tunnel import ssh

SAMPLES = 7
DNS_TIMEOUT = 2.0  # a dnsmasq that has not answered a cached name by then is not answering
CONNECT_TIMEOUT = 3.0
# Throughput: read the pod's zeros for at most this long or this much, whichever first.
BULK_SECONDS = 1.0
BULK_BYTES = 256 << 20


class Hop(StrEnum):
    PORT_FORWARD = "port-forward"
    SSH = "ssh"
    TARGET = "target"
    DNS = "dns"


@dataclass(frozen=True)
class Measured:
    """One hop: its round trips (its own share), throughput, other figures, or why it failed."""

    hop: Hop
    path: str
    rtt: RoundTrips | None = None
    throughput: Throughput | None = None
    figures: dict[str, float | int | str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Target:
    """What the shadow pod connects to for the target hop, and the name DNS is asked."""

    label: str  # service/nginx
    host: str
    port: int
    dns_name: str
    ready_endpoints: int | None = None


def _global_request(session: Session) -> Callable[[], None]:
    """One SSH global request, which sshd answers at once: a round trip of the
    port-forward with nothing of SSH's own in it."""
    transport = session.transport()

    def once() -> None:
        transport.global_request("keepalive@ktpy.dev", wait=True)
        if not transport.is_active():
            raise ConnectionError("the tunnel dropped")

    return once


def _channel(session: Session, host: str, port: int) -> Callable[[], None]:
    """One SSH channel opened (sshd connects to host:port) and closed."""
    transport = session.transport()

    def once() -> None:
        ssh.open_channel(transport, host, port, timeout=CONNECT_TIMEOUT).close()

    return once


def port_forward(session: Session, api: ClusterApi) -> Measured:
    """Round trips of SSH global requests (the port-forward's own), and of the API
    server alone for comparison."""
    spec = session.spec
    path = f"this machine -> API server -> kubelet -> pod/{spec.pod_name}:{spec.ssh_port}"
    figures: dict[str, float | int | str] = {}
    try:
        api_rtt = probe.round_trips(api.server_time, SAMPLES, warmup=1)
        figures["api_rtt_ms"] = round(api_rtt.p50_ms, 2)
        rtt = probe.round_trips(_global_request(session), SAMPLES, warmup=1)
    except Exception as exc:  # noqa: BLE001 (any failure here is the finding)
        return Measured(Hop.PORT_FORWARD, path, figures=figures, error=str(exc))
    return Measured(Hop.PORT_FORWARD, path, rtt=rtt, figures=figures)


def ssh_session(session: Session) -> Measured:
    """sshd's own share: a channel to itself, less a global request."""
    path = f"sshd in pod/{session.spec.pod_name}"
    timings = session.timings
    figures: dict[str, float | int | str] = {
        "handshake_ms": round((timings.tunnel_up - timings.pod_ready) * 1000, 1)
    }
    try:
        whole, own = probe.own_share(
            _channel(session, "127.0.0.1", session.spec.ssh_port),
            _global_request(session),
            SAMPLES,
            warmup=1,
        )
    except OSError as exc:
        return Measured(Hop.SSH, path, figures=figures, error=str(exc))
    figures["whole_path_ms"] = round(whole.p50_ms, 2)
    return Measured(Hop.SSH, path, rtt=own, figures=figures)


def target(session: Session, goal: Target) -> Measured:
    """The pod's TCP connect to the Service: a channel to it, less one to sshd itself."""
    path = f"pod/{session.spec.pod_name} -> {goal.label} ({goal.host}:{goal.port})"
    figures: dict[str, float | int | str] = {}
    if goal.ready_endpoints is not None:
        figures["ready_endpoints"] = goal.ready_endpoints
    try:
        whole, own = probe.own_share(
            _channel(session, goal.host, goal.port),
            _channel(session, "127.0.0.1", session.spec.ssh_port),
            SAMPLES,
            warmup=1,
        )
    except OSError as exc:
        return Measured(Hop.TARGET, path, figures=figures, error=str(exc))
    figures["whole_path_ms"] = round(whole.p50_ms, 2)
    return Measured(Hop.TARGET, path, rtt=own, figures=figures)


def _ask(exchange: Callable[[bytes], bytes], name: str) -> DNSRecord:
    reply = DNSRecord.parse(exchange(DNSRecord.question(name, "A").pack()))
    if reply.header.rcode != RCODE.NOERROR or not any(rr.rtype == QTYPE.A for rr in reply.rr):
        raise LookupError(f"{name}: {RCODE.get(reply.header.rcode)}, no address")
    return reply


def dns(session: Session, name: str) -> Measured:
    """Queries to the pod's dnsmasq over one TCP channel (as connect asks it), less a
    global request. When dnsmasq fails, the cluster's DNS is asked directly, so the
    finding says which of the two does not answer."""
    spec = session.spec
    path = f"dnsmasq in pod/{spec.pod_name} -> cluster DNS, asked for {name}"
    exchange = TcpExchange(session.open_flow, "127.0.0.1", spec.dns_port, timeout=DNS_TIMEOUT)
    try:
        whole, own = probe.own_share(
            lambda: _ask(exchange, name), _global_request(session), SAMPLES, warmup=1
        )
    except (OSError, EOFError, LookupError) as exc:
        why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        return Measured(Hop.DNS, path, figures=_cluster_dns(session, name), error=f"dnsmasq: {why}")
    finally:
        exchange.close()
    figures: dict[str, float | int | str] = {"whole_path_ms": round(whole.p50_ms, 2)}
    return Measured(Hop.DNS, path, rtt=own, figures=figures)


def _cluster_dns(session: Session, name: str) -> dict[str, float | int | str]:
    """Whether the pod's own nameserver (behind dnsmasq) answers name."""
    try:
        resolv = session.run("cat /etc/resolv.conf")
    except (OSError, ssh.SshError) as exc:
        return {"cluster_dns": f"unknown: {exc}"}
    servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver ")]
    if not servers:
        return {"cluster_dns": "the pod has no nameserver"}
    exchange = TcpExchange(session.open_flow, servers[0], 53, timeout=DNS_TIMEOUT)
    try:
        _ask(exchange, name)
    except (OSError, EOFError, LookupError) as exc:
        why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
        return {"cluster_dns": f"{servers[0]} fails too: {why}"}
    finally:
        exchange.close()
    return {"cluster_dns": f"{servers[0]} answers"}


def throughput(session: Session, seconds: float = BULK_SECONDS) -> Throughput:
    """Zeros from the pod (``head``, which the image keeps, on an SSH exec channel) for
    at most ``seconds``."""
    channel = session.transport().open_session(timeout=CONNECT_TIMEOUT)
    try:
        channel.settimeout(seconds + CONNECT_TIMEOUT)
        started = time.perf_counter()
        channel.exec_command(f"head -c {BULK_BYTES} /dev/zero")
        deadline = started + seconds

        def recv(size: int) -> bytes:
            return b"" if time.perf_counter() > deadline else channel.recv(size)

        return probe.drain(recv, started=started)
    finally:
        with contextlib.suppress(Exception):
            channel.close()
