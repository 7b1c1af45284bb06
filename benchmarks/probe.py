"""Runs inside a laptop namespace: bulk download and request/response latency
against one HTTP target, directly or through a SOCKS5 proxy. Prints one JSON object.

    python -m benchmarks.probe bulk HOST PORT BYTES [--socks PORT]
    python -m benchmarks.probe latency HOST PORT COUNT [--socks PORT]

The measuring itself is ktpy's (ktpy/net/probe.py), shared with ``ktpy doctor``.
"""

from __future__ import annotations

import argparse
import json

from ktpy.net.probe import http_bulk, http_latency


def bulk(host: str, port: int, size: int, socks_port: int | None) -> dict[str, float]:
    return http_bulk(host, port, size, socks_port).as_dict()


def latency(host: str, port: int, count: int, socks_port: int | None) -> dict[str, float]:
    return http_latency(host, port, count, socks_port).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["bulk", "latency"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("amount", type=int)
    parser.add_argument("--socks", type=int)
    args = parser.parse_args()
    measure = bulk if args.what == "bulk" else latency
    print(json.dumps(measure(args.host, args.port, args.amount, args.socks)))


if __name__ == "__main__":
    main()
