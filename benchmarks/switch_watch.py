"""Who answers a Service, asked from the node with a new connection every 20 ms,
until a line comes on stdin: the suite's view of an exchange switching in and out.

    python -m benchmarks.switch_watch HOST PORT

Prints one JSON line per request ({"at": monotonic, "who": "pod"|"laptop"|"error"})
and a line {"now": who} each time the answering side changes (as it happens).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time


def ask(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        body = json.loads(data.partition(b"\r\n\r\n")[2])
    except (OSError, ValueError):
        return "error"
    return "laptop" if body.get("pod") == "laptop" else "pod"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=300, help="at most")
    args = parser.parse_args()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    seen: list[tuple[float, str]] = []
    last = ""
    deadline = time.monotonic() + args.seconds
    while not done.is_set() and time.monotonic() < deadline:
        at = time.monotonic()
        who = ask(args.host, args.port)
        seen.append((at, who))
        if who != last and who != "error":
            print(json.dumps({"now": who}), flush=True)
            last = who
        time.sleep(max(0.0, 0.02 - (time.monotonic() - at)))
    for at, who in seen:
        print(json.dumps({"at": at, "who": who}))


if __name__ == "__main__":
    main()
