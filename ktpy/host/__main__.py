"""A thin driver over ``ktpy.host`` for the integration tests and for debugging by hand.

It calls exactly what ``ktpy connect`` and ``ktpy clean --local`` call, so a
test that runs it inside a laptop-like namespace proves those code paths::

    python -m ktpy.host snapshot
    python -m ktpy.host connect --journal-dir DIR --session ab12cd34 \\
        --range 10.96.0.0/16 --api 10.250.0.1 --domain cluster.local
    python -m ktpy.host clean-local --journal-dir DIR

``connect`` prints one JSON line when everything is set up, then waits for
SIGTERM, SIGINT or SIGHUP, undoes everything and prints the undo report.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ktpy.config import TUN_MTU
from ktpy.errors import KtpyError
from ktpy.host import snapshot
from ktpy.host.journal import Journal
from ktpy.host.network import HostRequest, Network, open_network, point_resolver, survey, tear_down
from ktpy.host.recovery import clean_local
from ktpy.host.resolvconf import RESOLV_CONF


def _connect(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handle)
    request = HostRequest(
        session=args.session,
        ranges=tuple(ipaddress.ip_network(r) for r in args.range),
        api_addresses=tuple(ipaddress.ip_address(a) for a in args.api),
        routing_domains=tuple(args.domain),
        search_domains=tuple(args.search),
        mtu=args.mtu,
        force=args.force,
    )
    resolv_conf = Path(args.resolv_conf)
    facts = survey(request, resolv_conf=resolv_conf)
    with Journal.create(Path(args.journal_dir), request.session) as journal:
        network: Network | None = None
        try:
            network = open_network(journal, facts, mtu=request.mtu)
            resolver = point_resolver(journal, facts, request, resolv_conf=resolv_conf)
            ready = {
                "tun": network.tun.name,
                "address": str(network.tun.address),
                "routed": [str(n) for n in network.routed],
                "skipped": [s.message() for s in facts.routes.skipped],
                "warnings": facts.warnings() + list(resolver.warnings),
                "resolver": str(resolver.choice.kind),
                "resolver_reason": resolver.choice.reason,
                "upstreams": list(resolver.upstreams),
                "journal": str(journal.path),
            }
            print(json.dumps(ready), flush=True)
            stop.wait()
        finally:
            report = tear_down(journal, network)
            print(
                json.dumps(
                    {
                        "undone": report.undone,
                        "notes": report.notes,
                        "failures": report.failures,
                        "removed": report.removed,
                    }
                ),
                flush=True,
            )
    return 0 if report.complete else 1


def _clean_local(args: argparse.Namespace) -> int:
    report = clean_local(Path(args.journal_dir))
    for line in report.lines():
        print(line, flush=True)
    return 0 if report.complete else 1


def _snapshot(args: argparse.Namespace) -> int:
    del args
    print(snapshot.take().to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktpy.host")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("snapshot", help="print a snapshot of the host as JSON")
    connect = commands.add_parser("connect", help="set up TUN, routes and resolver; wait")
    connect.add_argument("--journal-dir", required=True)
    connect.add_argument("--session", required=True)
    connect.add_argument("--range", action="append", default=[])
    connect.add_argument("--api", action="append", default=[])
    connect.add_argument("--domain", action="append", default=[])
    connect.add_argument("--search", action="append", default=[])
    connect.add_argument("--mtu", type=int, default=TUN_MTU)
    connect.add_argument("--force", action="store_true")
    connect.add_argument("--resolv-conf", default=str(RESOLV_CONF))
    clean = commands.add_parser("clean-local", help="undo the journals of dead sessions")
    clean.add_argument("--journal-dir", required=True)
    args = parser.parse_args(argv)
    handlers = {"connect": _connect, "clean-local": _clean_local, "snapshot": _snapshot}
    try:
        return handlers[args.command](args)
    except KtpyError as exc:
        exc.show()
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
