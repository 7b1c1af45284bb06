"""Network namespaces standing in for a pod's network, and helpers to open
sockets inside them from the test process (no extra processes to reap)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.integration.support import in_netns

PREFIX = "ktpy-shimg-"  # every namespace these tests make starts with this
# RFC 2544 benchmarking range: never routed, unlikely to collide with the
# test bed or the host's own networks.
_POOL = ipaddress.IPv4Network("198.18.0.0/15")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def listen_in(ns: str, host: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        return s

    return in_netns(ns, make)


def connect_in(ns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    return in_netns(ns, lambda: socket.create_connection((host, port), timeout=timeout))


@dataclass
class Netns:
    """A namespace with lo up and a veth pair to the host: "eth0" inside
    (the pod IP) and a /30 shared with the host side."""

    name: str
    host_if: str
    host_addr: str
    addr: str

    def pids(self) -> list[int]:
        return [int(p) for p in run("ip", "netns", "pids", self.name).split()]

    def delete(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], check=False, capture_output=True)


_counter = 0
_lock = threading.Lock()


def _free_subnet() -> ipaddress.IPv4Network:
    used = run("ip", "-o", "-4", "addr", "show")
    subnets = list(_POOL.subnets(new_prefix=30))
    start = (os.getpid() * 7) % len(subnets)
    for i in range(len(subnets)):
        net = subnets[(start + i) % len(subnets)]
        if not any(f" {h}/" in used for h in net):
            return net
    raise RuntimeError("no free /30 in 198.18.0.0/15")


def create(sysctls: dict[str, str] | None = None) -> Netns:
    global _counter
    with _lock:
        _counter += 1
        n = _counter
    name = f"{PREFIX}{os.getpid()}-{n}"
    host_if = f"ksh{os.getpid() % 100000}x{n}"[:15]
    ns = Netns(name=name, host_if=host_if, host_addr="", addr="")
    run("ip", "netns", "add", name)
    try:
        net = _free_subnet()
        hosts = list(net.hosts())
        ns.host_addr, ns.addr = str(hosts[0]), str(hosts[1])
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "addr", "add", f"{ns.host_addr}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "addr", "add", f"{ns.addr}/30", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        for key, value in (sysctls or {}).items():
            run("ip", "netns", "exec", name, "sysctl", "-qw", f"{key}={value}")
    except BaseException:
        ns.delete()
        raise
    return ns


def remove_stale() -> None:
    """Delete namespaces left by earlier test runs whose process is gone."""
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            Netns(name=name, host_if="", host_addr="", addr="").delete()
