"""`ktpy doctor [SERVICE]`: what stands in the way of a session, and which hop of a
working one is slow or broken.

First the checks that need no pod: root and TUN, this machine's routes and
resolver against the cluster's ranges, the API server, and the rights each
command needs (asked of the API server). Then a shadow pod of its own (whether
the image can be pulled is that pod's start), its hops measured
(``ktpy/session/hops.py``) and judged (``ktpy/diagnosis.py``), and the pod
removed again, as every session removes its own, on Ctrl-C too. The figures are
kept for the next run, which reports the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ktpy import diagnosis, params
from ktpy.cluster import access, labels, names, ranges
from ktpy.cluster.api import ApiError, ClusterApi, Kind, NotFound
from ktpy.cluster.labels import Role
from ktpy.commands.connect_tun import TUN_DEVICE
from ktpy.commands.context import make_api, settings_of
from ktpy.config import Settings
from ktpy.diagnosis import Check, Report, Status
from ktpy.errors import (
    Forbidden,
    HostChangeFailed,
    HostKeyMismatch,
    ImageUnavailable,
    Interrupted,
    KtpyError,
    PortForwardRefused,
    ProblemFound,
    ServiceNotFound,
    SshAuthFailed,
    SshHandshakeFailed,
    UsageProblem,
)
from ktpy.host import resolver, routes
from ktpy.lifecycle import Lifecycle
from ktpy.session import Session, ShadowSpec, hops
from ktpy.session.hops import Measured, Target
from ktpy.tunnel.ssh import SshError

HISTORY_FILE = "doctor.json"  # beside the journal: the last figures per cluster and target
DEFAULT_DOMAIN = "cluster.local"  # until the shadow pod says otherwise


# --- checks on this machine --------------------------------------------------------------


def machine_checks() -> list[Check]:
    checks = []
    if os.geteuid() == 0:
        checks.append(Check("root", Status.OK, "running as root: connect's TUN mode can start"))
    else:
        checks.append(
            Check(
                "root",
                Status.WARN,
                "not root: 'ktpy connect' (TUN mode) needs sudo; "
                "'ktpy connect --mode socks' and every other command do not",
            )
        )
    if TUN_DEVICE.exists():
        checks.append(Check("TUN", Status.OK, f"{TUN_DEVICE} exists"))
    else:
        checks.append(
            Check(
                "TUN",
                Status.WARN,
                f"{TUN_DEVICE} is missing: connect's TUN mode cannot run here "
                "(a container without the device?); --mode socks can",
            )
        )
    return checks


def route_check(found: list[ranges.Ranges]) -> Check:
    wanted = [net for r in found for net in r.networks]
    shown = ", ".join(map(str, wanted)) or "none found"
    try:
        host_routes = routes.read_host_routes()
    except HostChangeFailed as exc:
        return Check("routes", Status.WARN, f"cannot read this machine's routes: {exc}")
    clashes = [
        f"{route.describe()} overlaps {net}"
        for net in wanted
        for route in routes.conflicts(net, host_routes)
    ]
    if clashes:
        return Check(
            "routes",
            Status.WARN,
            "; ".join(clashes) + " (connect leaves these addresses to the existing route "
            "unless --force-routes)",
            hint="A VPN or a container bridge uses part of the cluster's ranges.",
        )
    return Check("routes", Status.OK, f"no route of this machine overlaps the cluster's {shown}")


def resolver_check(domain: str, cluster_networks: list[Any]) -> Check:
    try:
        choice = resolver.detect_resolver()
        servers = resolver.upstream_nameservers(choice)
        search = resolver.laptop_search_domains(choice)
    except (OSError, HostChangeFailed) as exc:
        return Check("resolver", Status.WARN, f"cannot read this machine's resolver: {exc}")
    problems = []
    for server in servers:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(server.split("%", 1)[0])
            if any(address in net for net in cluster_networks if net.version == address.version):
                problems.append(f"nameserver {server} lies in the cluster's ranges")
    if any(s == domain or s.endswith("." + domain) for s in search):
        problems.append(f"this machine already searches {domain}")
    if problems:
        return Check("resolver", Status.WARN, f"{choice.kind.value}: " + "; ".join(problems))
    return Check(
        "resolver", Status.OK, f"{choice.kind.value} ({choice.reason}); nothing claims {domain}"
    )


# --- checks against the cluster ----------------------------------------------------------


def api_check(api: ClusterApi) -> Check:
    started = time.perf_counter()
    api.server_time()
    took = (time.perf_counter() - started) * 1000
    return Check("API server", Status.OK, f"{getattr(api, 'host', '')} answers ({took:.0f} ms)")


def rights_check(api: ClusterApi, namespace: str) -> Check:
    try:
        missing = [m for m in access.review(api, namespace) if m.rights]
    except (ApiError, KtpyError) as exc:
        return Check("permissions", Status.WARN, f"cannot ask the API server: {exc}")
    if not missing:
        return Check("permissions", Status.OK, f"every command has its rights in {namespace}")
    words = "; ".join(
        f"{m.command} lacks {', '.join(r.describe() for r in m.rights)}" for m in missing
    )
    doctor_blocked = any(m.command == "doctor" for m in missing)
    return Check(
        "permissions",
        Status.FAIL if doctor_blocked else Status.WARN,
        f"in namespace {namespace}: {words}",
        hint="Ask a cluster admin for a Role with these rights (docs/troubleshooting.md).",
    )


def resolve_target(api: ClusterApi, service: str | None, namespace: str) -> Target | None:
    """The Service the target hop connects to (given, or the API server's own
    ``kubernetes.default``); None when that one may not be read."""
    where = namespace if service else "default"
    name = service or "kubernetes"
    try:
        body = api.get(Kind.SERVICE, where, name)
    except NotFound:
        if service:
            raise ServiceNotFound(service, namespace) from None
        return None
    except Forbidden:
        if service:
            raise
        return None
    spec = body.get("spec") or {}
    ports = [p for p in spec.get("ports") or () if p.get("protocol", "TCP") == "TCP"]
    if not ports:
        if not service:
            return None
        raise UsageProblem(
            f"service '{name}' has no TCP port",
            hint="doctor measures TCP, as ktpy carries it: name a Service with a TCP port.",
        )
    ready = _ready_addresses(api, where, name)
    host = spec.get("clusterIP") or "None"
    if host == "None":  # headless: the first ready pod stands for it
        host = ready[0] if ready else ""
    return Target(
        label=f"service/{name}" if where == namespace else f"service/{where}/{name}",
        host=host,
        port=int(ports[0]["port"] if spec.get("clusterIP") != "None" else ports[0]["targetPort"]),
        dns_name=f"{name}.{where}.svc",
        ready_endpoints=len(ready),
    )


def _ready_addresses(api: ClusterApi, namespace: str, service: str) -> list[str]:
    try:
        slices = api.list_objects(
            Kind.ENDPOINT_SLICE, namespace, label_selector=f"{labels.SERVICE_NAME_LABEL}={service}"
        ).items
    except (ApiError, KtpyError):
        return []
    return [
        address
        for item in slices
        for endpoint in item.get("endpoints") or ()
        if (endpoint.get("conditions") or {}).get("ready") is not False
        for address in endpoint.get("addresses") or ()
    ]


# A session that cannot start names the hop that failed it.
_START_FAILURES: dict[type[KtpyError], str] = {
    PortForwardRefused: "port-forward",
    SshHandshakeFailed: "ssh",
    SshAuthFailed: "ssh",
    HostKeyMismatch: "ssh",
}


# --- the hops ------------------------------------------------------------------------------


def measure(
    session: Session, api: ClusterApi, target: Target | None, domain: str
) -> list[Measured]:
    port_forward = hops.port_forward(session, api)
    found = [port_forward, hops.ssh_session(session)]
    if target is not None:
        found.append(hops.target(session, target))
    dns_name = f"{target.dns_name if target else 'kubernetes.default.svc'}.{domain}"
    found.append(hops.dns(session, dns_name))
    if port_forward.error is None:
        try:
            bulk = hops.throughput(session)
            found[0] = dataclasses.replace(port_forward, throughput=bulk)
        except (OSError, EOFError) as exc:
            found[0] = dataclasses.replace(port_forward, error=f"bulk download failed: {exc}")
    return found


def history_key(api: ClusterApi, namespace: str, target: Target | None) -> str:
    return f"{getattr(api, 'host', '')} {namespace} {target.label if target else '-'}"


def load_history(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_history(path: Path, key: str, measured: list[Measured]) -> None:
    data = load_history(path)
    data[key] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "hops": {m.hop.value: diagnosis.record(m) for m in measured if m.error is None},
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(path)


def diagnose(settings: Settings, service: str | None, report: Report) -> list[str]:
    """Fill in report; returns what was deleted again, in words."""
    report.checks.extend(machine_checks())
    api = make_api(settings)
    namespace = settings.namespace
    try:
        report.checks.append(api_check(api))
    except KtpyError as exc:  # unreachable, rejected credentials, slow, failing, throttling
        report.checks.append(Check("API server", Status.FAIL, str(exc), exc.hint or ""))
        return []
    target = resolve_target(api, service, namespace)  # a missing SERVICE: before any change
    found: list[ranges.Ranges] = []
    for read in (ranges.service_ranges, ranges.pod_ranges):
        with contextlib.suppress(ApiError, KtpyError):
            found.append(read(api, namespace))
    report.checks.append(route_check(found))
    networks = [n for r in found for n in r.networks]
    report.checks.append(rights_check(api, namespace))
    if report.checks[-1].status is Status.FAIL:
        return []

    spec = ShadowSpec(
        role=Role.DOCTOR,
        namespace=namespace,
        pod_name=names.doctor_shadow_name(),
        image=settings.image,
        target=target.label if target else None,
    )
    session = Session(api, settings, spec)
    deleted: list[str] = []
    history = settings.journal_dir.parent / HISTORY_FILE
    key = history_key(api, namespace, target)
    with Lifecycle().installed():
        try:
            session.start()
        except Interrupted:
            raise
        except ImageUnavailable as exc:
            report.checks.append(Check("shadow image", Status.FAIL, str(exc), exc.hint or ""))
            report.checks.append(resolver_check(DEFAULT_DOMAIN, networks))
            return []
        except KtpyError as exc:
            where = _START_FAILURES.get(type(exc), "shadow pod")
            report.checks.append(Check(where, Status.FAIL, str(exc), exc.hint or ""))
            report.checks.append(resolver_check(DEFAULT_DOMAIN, networks))
            return []
        try:
            took = session.timings.pod_ready - session.timings.pod_created
            report.checks.append(
                Check(
                    "shadow image",
                    Status.OK,
                    f"{settings.image}: pod/{spec.pod_name} ready in {took:.1f}s",
                )
            )
            # The cluster's domain as its pods see it, for the resolver check and DNS.
            try:
                domain = ranges.cluster_domain(session.run("cat /etc/resolv.conf"))
            except (OSError, EOFError, SshError):
                domain = None  # the ssh hop will say why
            domain = domain or DEFAULT_DOMAIN
            report.checks.append(resolver_check(domain, networks))
            measured = measure(session, api, target, domain)
        finally:
            deleted = [f"{o.kind.value.lower()}/{o.name}" for o in reversed(session.created)]
            session.close()
    previous = load_history(history).get(key, {}).get("hops", {})
    report.hops.extend(diagnosis.judge_hop(m, previous.get(m.hop.value)) for m in measured)
    save_history(history, key, measured)
    return deleted


@click.command()
@click.argument("service", required=False, type=params.NAME)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="How to print the report.",
)
@click.pass_context
def doctor(ctx: click.Context, service: str | None, output: str) -> None:
    """Check this machine, the cluster and the tunnel, and name the hop that fails or drags.

    \b
    Measures each hop with a shadow pod of its own (removed again): the
    port-forward, SSH in the pod, the pod's connection to SERVICE (default: the
    API server's own Service), and DNS. Compares with the previous run.
    Exits 60 when it found a problem.
        ktpy doctor web
    """
    settings = settings_of(ctx)
    report = Report()
    deleted = diagnose(settings, service, report)
    if output == "json":
        click.echo(json.dumps({**diagnosis.to_json(report), "deleted": deleted}, indent=1))
    else:
        for line in diagnosis.render(report):
            click.echo(line)
        if deleted:
            click.echo(f"Deleted {', '.join(deleted)}.")
    problem = report.problem
    if problem is not None:
        raise ProblemFound(problem[0], hint=problem[1] or None)
