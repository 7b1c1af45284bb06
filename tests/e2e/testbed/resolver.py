"""The bed's own resolver: the laptops' (and the node's) upstream DNS.

It answers the test domain, NXDOMAIN for every other name (so no lookup ever
leaves the machine), and appends one JSON line per query to a log: tests read
the log to prove which names reached it and from where.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from . import config

QUERY_LOG = config.STATE_DIR / "resolver" / "queries.jsonl"

# Names the test domain holds; anything else under it is NXDOMAIN.
RECORDS: dict[str, list[RR]] = {
    f"www.{config.TEST_DOMAIN}.": [
        RR(f"www.{config.TEST_DOMAIN}.", QTYPE.A, rdata=A(config.NODE_IP), ttl=60)
    ],
    f"api.{config.TEST_DOMAIN}.": [
        RR(f"api.{config.TEST_DOMAIN}.", QTYPE.A, rdata=A(config.NODE_IP), ttl=60)
    ],
    f"hello.{config.TEST_DOMAIN}.": [
        RR(f"hello.{config.TEST_DOMAIN}.", QTYPE.TXT, rdata=TXT("ktbed"), ttl=60)
    ],
}
ZONE_SOA = RR(
    f"{config.TEST_DOMAIN}.",
    QTYPE.SOA,
    ttl=60,
    rdata=SOA(f"ns.{config.TEST_DOMAIN}.", f"admin.{config.TEST_DOMAIN}.", (1, 60, 60, 60, 30)),
)


class TestDomainResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        with self.lock, self.log_path.open("a") as log:
            log.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "src": handler.client_address[0],
                        "name": qname,
                        "type": qtype,
                        "proto": handler.protocol,
                    }
                )
                + "\n"
            )
        reply = request.reply()
        records = RECORDS.get(qname)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            if qname.endswith(f"{config.TEST_DOMAIN}."):
                reply.add_auth(ZONE_SOA)
            return reply
        for rr in records:
            if rr.rtype == request.q.qtype:
                reply.add_answer(rr)
        if not reply.rr:
            reply.add_auth(ZONE_SOA)  # NODATA: the name exists, not with that type
        return reply


def queries(log_path: Path = QUERY_LOG) -> list[dict[str, Any]]:
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=config.RESOLVER_IP)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--log", type=Path, default=QUERY_LOG)
    args = parser.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.touch()
    resolver = TestDomainResolver(args.log)
    servers = [
        DNSServer(resolver, address=args.address, port=args.port, tcp=tcp, logger=_Quiet())
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    while all(s.isAlive() for s in servers):
        time.sleep(1)
    raise SystemExit("resolver thread died")


class _Quiet:
    """dnslib's default logger prints every request; the JSON log is enough."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


if __name__ == "__main__":
    main()
