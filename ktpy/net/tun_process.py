"""The TUN stack (and connect's DNS server) in a process of its own, unprivileged,
carrying each flow through the parent's SOCKS5 proxy.

Why a process: in one Python process the stack's threads, paramiko's cipher
and the port-forward's TLS share one GIL. Measured on the 2-core test bed,
TUN bulk reached 0.64-0.78 of kubectl port-forward while the SOCKS path alone
reached 0.98 (docs/performance.md). Apart, the stack runs on the other core
and the parent carries each flow exactly as it carries a SOCKS client's:
tun2socks, as the mode is named.

Why unprivileged: the stack parses what any local program sends into the
device, the DNS server what they ask and what the cluster answers. Started as
root, the child becomes ``--user`` before the first packet (the open TUN fd and
the DNS listeners, bound by the parent, are all it needs of root) and reaches
the tunnel through a unix socket only that user may open.

Parent side::

    proc = TunProcess(tun_fd, socks_path, mtu=65000, user=(1000, 1000), dns=spec).start()
    proc.set_known(services=...)   # the DNS server's knowledge, from the watches
    proc.stop_stack()              # the device may go; DNS answers on
    proc.stop()

Child side: ``python -m ktpy.net.tun_process --fd N --socks PATH|HOST:PORT --mtu M``
(``--max-buffered`` bounds what the stack holds for all flows together;
``--stats-file`` gets the stack's counters as JSON every second, for --debug
and the tests that measure the bound; ``--dns`` the DNS server's DnsSpec).
The child runs in a session of its own (a Ctrl-C at the terminal reaches only
the parent, which tears down in order) and exits when its stdin closes: when
the parent stops it, or dies (kill -9). So it never outlives the parent and
never holds the TUN device open after it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import socks

from ktpy.logs import LogFormat, configure, get_logger
from ktpy.net.dns import ClusterNames, Collision
from ktpy.net.dns_server import DnsServer, tcp_exchange_over
from ktpy.net.relay import Flow, FlowOpener, SocketFlow, recv_exact
from ktpy.net.socks5 import ReplyCode
from ktpy.net.tcp import TcpConfig
from ktpy.net.tun_tcp import TunStack
from ktpy.privileges import drop_privileges

log = get_logger("ktpy.tun")

READY = "ready"
START_TIMEOUT = 10.0  # the child imports, enables offloads and says READY
STOP_TIMEOUT = 6.0  # the stack resets every flow and joins its threads in 5 s
OPEN_TIMEOUT = 30.0  # a SOCKS handshake waits for the SSH channel open


STACK_STOPPED = "stack-stopped"


class TunProcessFailed(OSError):
    """The child did not start, or ended on its own."""


@dataclass(frozen=True)
class DnsSpec:
    """The DNS server the child runs: it parses what local programs ask and what the
    cluster answers, so it runs unprivileged too, on listeners the parent bound (port
    53 needs root). ``cluster``: the shadow's dnsmasq, asked through the proxy."""

    names: ClusterNames
    upstreams: tuple[str, ...]
    cluster: tuple[str, int]
    udp: socket.socket
    tcp: socket.socket

    def argument(self) -> str:
        n = self.names
        return json.dumps(
            {
                "names": {
                    "domain": n.domain, "namespace": n.namespace,
                    "namespaces": sorted(n.namespaces), "services": sorted(n.services),
                    "cidrs": [str(c) for c in n.cidrs], "search": list(n.search),
                    "ipv6": n.ipv6,
                },
                "upstreams": list(self.upstreams),
                "cluster": list(self.cluster),
                "fds": [self.udp.fileno(), self.tcp.fileno()],
            }
        )  # fmt: skip


def dns_server_from(argument: str, open_flow: FlowOpener, say: Callable[[Any], None]) -> DnsServer:
    """The child's DnsServer from ``DnsSpec.argument``; collisions go to ``say``."""
    spec = json.loads(argument)
    names = spec["names"]
    host, port = spec["cluster"]
    udp_fd, tcp_fd = spec["fds"]
    udp = socket.socket(fileno=udp_fd)
    tcp = socket.socket(fileno=tcp_fd)
    return DnsServer(
        ClusterNames(
            domain=names["domain"],
            namespace=names["namespace"],
            namespaces=frozenset(names["namespaces"]),
            services=frozenset(names["services"]),
            cidrs=tuple(ipaddress.ip_network(c) for c in names["cidrs"]),
            search=tuple(names["search"]),
            ipv6=names["ipv6"],
        ),
        tcp_exchange_over(open_flow, host, port),
        spec["upstreams"],
        sockets=(udp, tcp),
        on_collision=lambda c: say({"collision": [c.name, c.cluster_name]}),
    )


# -- child side ---------------------------------------------------------------------


def error_for_reply(code: int, target: str) -> OSError:
    """The OSError the stack turns into the kernel client's answer (RST or ICMP)."""
    if code == ReplyCode.CONNECTION_REFUSED:
        return ConnectionRefusedError(errno.ECONNREFUSED, f"{target}: connection refused")
    if code == ReplyCode.NETWORK_UNREACHABLE:
        return OSError(errno.ENETUNREACH, f"{target}: network unreachable")
    if code in (ReplyCode.HOST_UNREACHABLE, ReplyCode.TTL_EXPIRED):
        return OSError(errno.EHOSTUNREACH, f"{target}: host unreachable")
    return OSError(errno.ECONNABORTED, f"{target}: SOCKS5 reply {code:#04x}")


def _reply_code(exc: socks.SOCKS5Error) -> int:
    # pysocks words its error "0x05: Connection refused" and keeps no number.
    try:
        return int(str(exc.msg).split(":", 1)[0], 16)
    except ValueError:
        return ReplyCode.GENERAL_FAILURE


def socks_opener(proxy_host: str, proxy_port: int, timeout: float = OPEN_TIMEOUT) -> FlowOpener:
    """open_flow for the stack: a SOCKS5 CONNECT through the parent's proxy."""

    def open_flow(host: str, port: int) -> Flow:
        target = f"{host}:{port}"
        sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.set_proxy(socks.SOCKS5, proxy_host, proxy_port, rdns=True)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except (socks.ProxyError, OSError) as exc:
            sock.close()
            # pysocks wraps the proxy's refusal: GeneralProxyError("Socket error", SOCKS5Error)
            refusal = getattr(exc, "socket_err", None) or exc
            if isinstance(refusal, socks.SOCKS5Error):
                raise error_for_reply(_reply_code(refusal), target) from exc
            raise OSError(errno.ECONNABORTED, f"{target}: SOCKS5 proxy: {exc}") from exc
        # A plain socket from here: pysocks wraps every recv in a recvfrom for UDP.
        plain = socket.socket(fileno=sock.detach())
        plain.settimeout(None)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketFlow(plain)

    return open_flow


def write_stats(path: Path, stats: dict[str, int]) -> None:
    """Replace path with the stats as one JSON object (a reader never sees half)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(stats) + "\n", encoding="utf-8")
    part.replace(path)


def socks_connect_request(host: str, port: int) -> bytes:
    """The greeting (no authentication: the socket's mode is it) and the CONNECT to
    IPv4 host:port, in one piece: the proxy is ktpy's own, which takes the request
    before it has answered the greeting, so a flow costs one round trip to the parent
    instead of two (each a wake-up of a thread in both processes)."""
    address = socket.inet_aton(host)  # the stack opens flows to IPv4 addresses only
    return b"\x05\x01\x00" + b"\x05\x01\x00\x01" + address + port.to_bytes(2, "big")


def _socks_connect(sock: socket.socket, host: str, port: int) -> int:
    """A SOCKS5 CONNECT to IPv4 host:port through ktpy's proxy; the reply code."""
    sock.sendall(socks_connect_request(host, port))
    # The method choice, then the reply (ktpy's proxy answers with an IPv4 address).
    answer = recv_exact(sock.recv, 2)
    if answer != b"\x05\x00":
        return ReplyCode.NOT_ALLOWED
    return recv_exact(sock.recv, 10)[1]


def unix_socks_opener(path: str, timeout: float = OPEN_TIMEOUT) -> FlowOpener:
    """open_flow for the stack: a SOCKS5 CONNECT through the parent's proxy on a unix
    socket (0600 in a 0700 directory: no other local user can open a flow)."""

    def open_flow(host: str, port: int) -> Flow:
        target = f"{host}:{port}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            code = _socks_connect(sock, host, port)
        except (OSError, EOFError) as exc:
            sock.close()
            raise OSError(errno.ECONNABORTED, f"{target}: SOCKS5 proxy: {exc}") from exc
        if code != ReplyCode.SUCCEEDED:
            sock.close()
            raise error_for_reply(code, target)
        sock.settimeout(None)
        return SocketFlow(sock)

    return open_flow


def opener_for(socks: str) -> FlowOpener:
    """``/path`` (a unix socket) or ``HOST:PORT``."""
    if socks.startswith("/"):
        return unix_socks_opener(socks)
    host, _, port = socks.rpartition(":")
    return socks_opener(host, int(port))


def _say(message: object, lock: threading.Lock = threading.Lock()) -> None:  # noqa: B008
    """One line to the parent (stdout), from any thread."""
    with lock:
        print(message if isinstance(message, str) else json.dumps(message), flush=True)


def serve(
    fd: int,
    open_flow: FlowOpener,
    mtu: int,
    control_fd: int,
    *,
    config: TcpConfig | None = None,
    stats_file: Path | None = None,
    dns: DnsServer | None = None,
) -> int:
    """Run the stack on fd (and the DNS server) until control_fd reaches EOF; 0, or 1
    if the packet loop died. control_fd carries JSON lines: ``{"namespaces": [...]}``
    and ``{"services": [...]}`` for the DNS server, ``{"stop": "stack"}`` to stop the
    stack and close the device's fd while the DNS server answers on (answered with
    STACK_STOPPED), before the parent deletes the device."""
    stack = TunStack(fd, open_flow, mtu=mtu, config=config).start()
    if dns is not None:
        dns.start()
    stopped = False
    pending = b""
    try:
        _say(READY)
        while stopped or stack.error is None:
            readable, _, _ = select.select([control_fd], [], [], 1.0)
            if stats_file is not None and not stopped:
                write_stats(stats_file, stack.stats)
            if not readable:
                continue
            data = os.read(control_fd, 65536)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                order = json.loads(line)
                if order.get("stop") == "stack" and not stopped:
                    stopped = True
                    stack.stop()
                    os.close(fd)
                    _say(STACK_STOPPED)
                elif dns is not None and "stop" not in order:
                    dns.set_known(
                        namespaces=order.get("namespaces"), services=order.get("services")
                    )
    finally:
        if not stopped:
            stack.stop()
        if dns is not None:
            dns.stop()
        log.debug("tun stack stats", **stack.stats)
        if stats_file is not None:
            with contextlib.suppress(OSError):
                write_stats(stats_file, stack.stats)
    if stack.error and not stopped:
        log.error("the TUN stack stopped", reason=stack.error)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktpy.net.tun_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument(
        "--socks", required=True, help="the SOCKS5 proxy: a unix socket's path, or HOST:PORT"
    )
    parser.add_argument("--mtu", type=int, required=True)
    parser.add_argument("--max-buffered", type=int, default=TcpConfig.max_buffered)
    parser.add_argument("--stats-file", type=Path, default=None)
    parser.add_argument("--user", default=None, help="UID:GID to run as, once started")
    parser.add_argument("--dns", default=None, help="the DNS server's DnsSpec, as JSON")
    parser.add_argument("--session", default="")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--log-format", default=LogFormat.CONSOLE.value)
    args = parser.parse_args(argv)
    configure(
        LogFormat(args.log_format),
        debug=args.debug,
        context={"session": args.session} if args.session else None,
    )
    if args.user:
        # Here rather than by exec'ing as that user: the interpreter may sit where only
        # root can reach it, and everything the stack needs is imported by now.
        uid, _, gid = args.user.partition(":")
        drop_privileges(int(uid), int(gid))
    try:
        open_flow = opener_for(args.socks)
        return serve(
            args.fd,
            open_flow,
            args.mtu,
            sys.stdin.fileno(),
            config=TcpConfig(max_buffered=args.max_buffered),
            stats_file=args.stats_file,
            dns=dns_server_from(args.dns, open_flow, _say) if args.dns else None,
        )
    except OSError as exc:
        reason = str(exc)  # one line, as every ktpy error: no traceback without --debug
    log.error("the TUN stack could not start", reason=reason)
    return 2


# -- parent side --------------------------------------------------------------------


class TunProcess:
    """The child process that runs the TUN stack on an open TUN fd."""

    def __init__(
        self,
        tun_fd: int,
        socks_address: tuple[str, int] | Path,
        *,
        mtu: int,
        max_buffered: int = TcpConfig.max_buffered,
        stats_file: Path | None = None,
        session: str = "",
        debug: bool = False,
        log_format: LogFormat = LogFormat.CONSOLE,
        on_exit: Callable[[str], None] | None = None,
        user: tuple[int, int] | None = None,
        dns: DnsSpec | None = None,
        on_collision: Callable[[Collision], None] | None = None,
    ) -> None:
        """socks_address: HOST:PORT or a unix socket's path. user: (uid, gid) the child
        runs as (it parses what every local program sends into the device; the open
        TUN fd is all it needs of root)."""
        self.tun_fd = tun_fd
        self.user = user
        self.dns = dns
        self.on_collision = on_collision
        self._stack_stopped = threading.Event()
        self._stdin_lock = threading.Lock()
        self.socks_address = socks_address
        self.mtu = mtu
        self.max_buffered = max_buffered
        self.stats_file = stats_file
        self.session = session
        self.debug = debug
        self.log_format = log_format
        self.on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> TunProcess:
        if isinstance(self.socks_address, Path):
            socks = str(self.socks_address)
        else:
            socks = f"{self.socks_address[0]}:{self.socks_address[1]}"
        argv = [
            sys.executable,
            "-m",
            "ktpy.net.tun_process",
            f"--fd={self.tun_fd}",
            f"--socks={socks}",
            f"--mtu={self.mtu}",
            f"--max-buffered={self.max_buffered}",
            *([f"--stats-file={self.stats_file}"] if self.stats_file else []),
            f"--session={self.session}",
            f"--log-format={self.log_format.value}",
            *([f"--user={self.user[0]}:{self.user[1]}"] if self.user else []),
            *([f"--dns={self.dns.argument()}"] if self.dns else []),
            *(["--debug"] if self.debug else []),
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(
                self.tun_fd,
                *((self.dns.udp.fileno(), self.dns.tcp.fileno()) if self.dns else ()),
            ),
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline().decode().strip() if ready else ""
        if line != READY:
            code = self._proc.poll()
            self.stop()
            raise TunProcessFailed(
                errno.EIO,
                "the TUN stack process did not start"
                + (f" (exit {code})" if code is not None else f" within {timeout:.0f}s"),
            )
        threading.Thread(target=self._watch, name="tun-process-watch", daemon=True).start()
        threading.Thread(target=self._listen, name="tun-process-lines", daemon=True).start()
        log.debug("tun stack process started", pid=self._proc.pid)
        return self

    def _listen(self) -> None:
        """The child's lines after READY: collisions to report, STACK_STOPPED."""
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in proc.stdout:
                line = raw.decode().strip()
                if line == STACK_STOPPED:
                    self._stack_stopped.set()
                elif line.startswith("{") and self.on_collision is not None:
                    name, cluster_name = json.loads(line)["collision"]
                    self.on_collision(Collision(name, cluster_name))

    def _order(self, order: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            with self._stdin_lock:
                proc.stdin.write(json.dumps(order).encode() + b"\n")
                proc.stdin.flush()
        except (OSError, ValueError):
            return False  # gone or stopping: its own watch says so
        return True

    def set_known(
        self, *, namespaces: Iterable[str] | None = None, services: Iterable[str] | None = None
    ) -> None:
        """The child's DNS server: replace the known namespaces and/or Services."""
        order: dict[str, Any] = {}
        if namespaces is not None:
            order["namespaces"] = sorted(namespaces)
        if services is not None:
            order["services"] = sorted(services)
        self._order(order)

    def stop_stack(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the TUN stack and close the child's device fd; the DNS server answers on
        until stop(). So the resolver can be put back while names still resolve."""
        self._stopping = True
        if self._order({"stop": "stack"}) and not self._stack_stopped.wait(timeout):
            log.warning("the TUN stack did not stop in time", pid=self.pid)

    def _watch(self) -> None:
        assert self._proc is not None
        code = self._proc.wait()
        if not self._stopping and self.on_exit is not None:
            self.on_exit(f"the TUN stack process ended on its own (exit {code})")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the child's stdin (it resets every flow and exits); kill it if it lingers."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the TUN stack process did not stop; killing it", pid=proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
