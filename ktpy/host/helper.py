"""The root helper of ``sudo ktpy connect``: the one process that keeps root.

sshuttle's firewall helper is the model. ``ktpy connect`` starts it as root, then
gives up root for good (the rest of the session parses what the cluster and the
local programs send: it runs as the invoking user). The helper makes the host
changes the session asks for, journals each before making it, keeps the
resolver in place (``ResolverGuard``), and undoes everything when asked, or when
its channel closes because the session process ended, ``kill -9`` included.

It takes few orders, each one message on a SOCK_SEQPACKET socket pair, JSON,
answered in turn (open descriptors ride along as SCM_RIGHTS)::

    {"op": "survey", "request": {...}}   read the host, change nothing
    {"op": "open", "search": [...]}      journal; TUN device, routes; DNS listeners
                                          (answered with the device's fd and the
                                          UDP and TCP sockets bound to port 53)
    {"op": "resolver"}                   point the resolver at ktpy's DNS server
    {"op": "route_names", "domains": [...]}   systemd-resolved's routing domains
    {"op": "close"}                      undo everything; the helper then exits

Nothing else: whoever holds the session process can ask for the routes of one
survey, that survey's resolver change, and their undo, once.

Session side::

    helper = HostHelper.start(journal_dir, run_dir)   # as root
    drop_privileges(...)                              # now the invoking user
    facts = helper.survey(request)
    opened = helper.open(search_domains)
    ...
    failures = helper.close()
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ktpy import errors
from ktpy.errors import HostChangeFailed, KtpyError
from ktpy.host import network as host
from ktpy.host.journal import Journal
from ktpy.host.resolver import ResolvConfGuard, ResolvedGuard, ResolverGuard, ResolverKind
from ktpy.logs import LogFormat, configure, get_logger

log = get_logger("ktpy.host.helper")

MAX_MESSAGE = 1 << 20
START_TIMEOUT = 10.0  # the helper imports and says it is there


# -- the orders, as JSON ---------------------------------------------------------------


def request_json(request: host.HostRequest) -> dict[str, Any]:
    return {
        "session": request.session,
        "ranges": [str(r) for r in request.ranges],
        "api_addresses": [str(a) for a in request.api_addresses],
        "routing_domains": list(request.routing_domains),
        "search_domains": list(request.search_domains),
        "mtu": request.mtu,
        "force": request.force,
    }


def request_from(data: dict[str, Any]) -> host.HostRequest:
    return host.HostRequest(
        session=str(data["session"]),
        ranges=tuple(ipaddress.ip_network(r) for r in data["ranges"]),
        api_addresses=tuple(ipaddress.ip_address(a) for a in data["api_addresses"]),
        routing_domains=tuple(str(d) for d in data["routing_domains"]),
        search_domains=tuple(str(d) for d in data["search_domains"]),
        mtu=int(data["mtu"]),
        force=bool(data["force"]),
    )


def error_json(exc: KtpyError) -> dict[str, Any]:
    return {
        "class": type(exc).__name__,
        "message": exc.format_message(),
        "hint": exc.hint,
    }


def error_from(data: dict[str, Any]) -> KtpyError:
    """The helper's error as the session process raises it: same class, message, hint."""
    kind = getattr(errors, str(data.get("class")), None)
    if not (isinstance(kind, type) and issubclass(kind, KtpyError)):
        kind = HostChangeFailed
    try:
        made = kind(str(data["message"]), hint=data.get("hint"))
    except TypeError:  # a class with a constructor of its own
        made = HostChangeFailed(str(data["message"]), hint=data.get("hint"))
    return made  # its exit code is its class's


@dataclass(frozen=True)
class Survey:
    """What the session needs of ``host.HostFacts``."""

    resolver: ResolverKind
    upstreams: tuple[str, ...]
    search: tuple[str, ...]
    tun_name: str
    tun_address: ipaddress.IPv4Address
    warnings: tuple[str, ...]


@dataclass
class Opened:
    """The TUN device and the DNS listeners, now this process's descriptors."""

    tun_fd: int
    udp: socket.socket
    tcp: socket.socket
    routed: tuple[str, ...]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.tun_fd)
        self.udp.close()
        self.tcp.close()


@dataclass(frozen=True)
class Resolver:
    kind: ResolverKind
    reason: str
    upstreams: tuple[str, ...]
    warnings: tuple[str, ...]


# -- the helper (root) -------------------------------------------------------------------


def bind_dns_listeners(address: str) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP port 53 on the TUN address: below 1024, so bound here."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind((address, 53))
        tcp = socket.create_server((address, 53), backlog=128)
    except BaseException:
        udp.close()
        raise
    return udp, tcp


class Helper:
    """The helper's state: one survey, one journal, one network, one guard."""

    def __init__(self, journal_dir: Path, run_dir: Path | None) -> None:
        self.journal_dir = journal_dir
        self.run_dir = run_dir
        self.request: host.HostRequest | None = None
        self.facts: host.HostFacts | None = None
        self.journal: Journal | None = None
        self.network: host.Network | None = None
        self.guard: ResolverGuard | None = None
        self.handed: tuple[socket.socket, ...] = ()  # sent with the answer, then closed here
        self.closed = False

    def handle(self, order: dict[str, Any]) -> tuple[Any, list[int]]:
        op = order.get("op")
        if op == "survey" and self.facts is None:
            return self._survey(request_from(order["request"])), []
        if op == "open" and self.facts is not None and self.journal is None:
            return self._open(tuple(str(d) for d in order["search"]))
        if op == "resolver" and self.network is not None and self.guard is None:
            return self._resolver(), []
        if op == "route_names" and self.guard is not None:
            return self._route_names(tuple(str(d) for d in order["domains"])), []
        if op == "close":
            return self.close(), []
        raise HostChangeFailed(f"the root helper cannot take {op!r} now")

    def _survey(self, request: host.HostRequest) -> dict[str, Any]:
        self.request, self.facts = request, host.survey(request)
        f = self.facts
        return {
            "resolver": f.resolver.kind.value,
            "upstreams": list(f.upstreams),
            "search": list(f.search),
            "tun_name": f.tun_name,
            "tun_address": str(f.tun_address),
            "warnings": f.warnings(),
        }

    def _open(self, search: tuple[str, ...]) -> tuple[Any, list[int]]:
        assert self.request is not None
        assert self.facts is not None
        self.request = dataclasses.replace(self.request, search_domains=search)
        self.journal = Journal.create(self.journal_dir, self.request.session)
        self.network = host.open_network(
            self.journal, self.facts, mtu=self.request.mtu, offload=True
        )
        udp, tcp = bind_dns_listeners(str(self.facts.tun_address))
        self.handed = (udp, tcp)
        answer = {"routed": [str(n) for n in self.network.routed]}
        return answer, [self.network.tun.fileno(), udp.fileno(), tcp.fileno()]

    def _resolver(self) -> dict[str, Any]:
        assert self.journal is not None
        assert self.facts is not None
        assert self.request is not None
        setup = host.point_resolver(self.journal, self.facts, self.request)
        say = lambda line: click.echo(line, err=True)  # noqa: E731
        server = [str(self.facts.tun_address)]
        self.guard = (
            ResolvConfGuard(self.journal, server, say)
            if setup.choice.kind is ResolverKind.RESOLV_CONF
            else ResolvedGuard(
                self.facts.tun_name,
                server,
                self.request.routing_domains,
                self.request.search_domains,
                say,
            )
        ).start()
        return {
            "kind": setup.choice.kind.value,
            "reason": setup.choice.reason,
            "upstreams": list(setup.upstreams),
            "warnings": list(setup.warnings),
        }

    def _route_names(self, domains: tuple[str, ...]) -> bool:
        assert self.journal is not None
        assert self.facts is not None
        assert self.request is not None
        changed = host.route_names(self.journal, self.facts, self.request, domains)
        if changed and isinstance(self.guard, ResolvedGuard):
            self.guard.follow_domains(domains, self.request.search_domains)
        return changed

    def close(self) -> dict[str, Any]:
        """Undo everything, once; the session's runtime files go too."""
        if self.closed:
            return {"failures": []}
        self.closed = True
        if self.guard is not None:
            self.guard.stop()  # no repair after the undo
        failures: list[str] = []
        if self.journal is not None:
            report = host.tear_down(self.journal, self.network)
            failures = report.failures
            self.journal.close()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return {"failures": failures}


def serve(channel: socket.socket, helper: Helper) -> int:
    """Answer orders until ``close`` or until the channel closes (the session process
    ended): everything is undone either way."""
    try:
        while True:
            data, _, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 0)
            if not data:
                log.debug("the session process is gone: undoing its host changes")
                break
            order = json.loads(data)
            fds: list[int] = []
            try:
                answer, fds = helper.handle(order)
                reply: dict[str, Any] = {"ok": answer}
            except KtpyError as exc:
                reply = {"error": error_json(exc)}
            except (OSError, ValueError, KeyError) as exc:
                reply = {"error": error_json(HostChangeFailed(f"root helper: {exc}"))}
            socket.send_fds(channel, [json.dumps(reply).encode()], fds)
            for sock in helper.handed:
                sock.close()  # the session process has them now
            helper.handed = ()
            if order.get("op") == "close":
                return 0
    finally:
        report = helper.close()
        for failure in report["failures"]:
            click.echo(f"Could not undo: {failure}", err=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktpy.host.helper")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--journal-dir", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--log-format", default=LogFormat.CONSOLE.value)
    args = parser.parse_args(argv)
    configure(LogFormat(args.log_format), debug=args.debug)
    # Signals are for the session process, which tears down in order and then closes
    # the channel; the helper undoes once that happens, however it ends.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    channel = socket.socket(fileno=args.channel)
    channel.send(b"ready")
    return serve(channel, Helper(args.journal_dir, args.run_dir))


# -- the session side ----------------------------------------------------------------------


class HostHelper:
    """The session process's handle on the root helper."""

    def __init__(self, proc: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.proc = proc
        self.channel = channel
        self._lock = threading.Lock()  # route_names comes from watch threads

    @classmethod
    def start(
        cls,
        journal_dir: Path,
        run_dir: Path | None = None,
        *,
        debug: bool = False,
        log_format: LogFormat = LogFormat.CONSOLE,
    ) -> HostHelper:
        """Start the helper as this (root) process's child, in a session of its own: a
        Ctrl-C at the terminal reaches only the session process, which orders the
        teardown."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            sys.executable, "-m", "ktpy.host.helper",
            f"--channel={theirs.fileno()}", f"--journal-dir={journal_dir}",
            *([f"--run-dir={run_dir}"] if run_dir is not None else []),
            *(["--debug"] if debug else []), f"--log-format={log_format.value}",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as exc:
            ours.close()
            raise HostChangeFailed(f"cannot start the root helper: {exc}") from exc
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            hello = ours.recv(16)
        except OSError:
            hello = b""
        if hello != b"ready":
            proc.kill()
            proc.wait()
            ours.close()
            raise HostChangeFailed("the root helper did not start")
        ours.settimeout(None)
        return cls(proc, ours)

    def _call(self, order: dict[str, Any], fds: int = 0) -> tuple[Any, list[int]]:
        with self._lock:
            try:
                self.channel.send(json.dumps(order).encode())
                data, got, _, _ = socket.recv_fds(self.channel, MAX_MESSAGE, fds)
            except OSError as exc:
                data, got = b"", []
                log.debug("root helper channel failed", error=str(exc))
        if not data:
            raise HostChangeFailed(
                "the root helper of this session is gone",
                hint="'sudo ktpy clean --local' undoes what it left.",
            )
        reply = json.loads(data)
        if "error" in reply:
            for fd in got:
                os.close(fd)
            raise error_from(reply["error"])
        return reply["ok"], got

    def survey(self, request: host.HostRequest) -> Survey:
        answer, _ = self._call({"op": "survey", "request": request_json(request)})
        return Survey(
            resolver=ResolverKind(answer["resolver"]),
            upstreams=tuple(answer["upstreams"]),
            search=tuple(answer["search"]),
            tun_name=str(answer["tun_name"]),
            tun_address=ipaddress.IPv4Address(answer["tun_address"]),
            warnings=tuple(answer["warnings"]),
        )

    def open(self, search_domains: tuple[str, ...]) -> Opened:
        answer, fds = self._call({"op": "open", "search": list(search_domains)}, fds=3)
        tun_fd, udp_fd, tcp_fd = fds
        return Opened(
            tun_fd,
            socket.socket(fileno=udp_fd),
            socket.socket(fileno=tcp_fd),
            tuple(answer["routed"]),
        )

    def point_resolver(self) -> Resolver:
        answer, _ = self._call({"op": "resolver"})
        return Resolver(
            ResolverKind(answer["kind"]),
            str(answer["reason"]),
            tuple(answer["upstreams"]),
            tuple(answer["warnings"]),
        )

    def route_names(self, domains: tuple[str, ...]) -> bool:
        answer, _ = self._call({"op": "route_names", "domains": list(domains)})
        return bool(answer)

    def close(self) -> list[str]:
        """Undo everything; what could not be undone. The helper exits."""
        try:
            answer, _ = self._call({"op": "close"})
            failures = [str(f) for f in answer["failures"]]
        except HostChangeFailed as exc:
            failures = [exc.format_message()]
        self.channel.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return failures


if __name__ == "__main__":
    sys.exit(main())
