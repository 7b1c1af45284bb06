"""Make cluster names resolve on the laptop, and nothing else change.

Two backends, chosen by what the laptop's programs actually ask:

- systemd-resolved, when it runs and programs go through it (/etc/resolv.conf
  names its stub 127.0.0.53, or nsswitch.conf uses nss-resolve): ktpy's DNS
  server and *routing* domains (``~cluster.local``, ``~ns1``) on ktpy's own
  link, and ``default-route false`` there, so resolved sends only names under
  those domains to ktpy and every other name where it went before. Undone by
  ``resolvectl revert``, and forgotten by resolved anyway when the link goes.
- otherwise /etc/resolv.conf: ktpy's DNS server first, between markers, the
  original nameservers after it (see ``resolvconf``); ktpy's DNS server forwards
  non-cluster names to those originals (``ResolverSetup.upstreams``, read before
  the change). Undone back to the original bytes.

A routing domain of the root (``~.``) would be a catch-all sending every name to
the cluster side first (kt-connect #289): it is refused here. Namespaces are
routing domains too (``svc.ns`` must reach ktpy); as they come and go during a
session ``set_domains`` replaces the link's domains, which the journalled revert
covers as it covers the first ones.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ktpy.errors import KtpyError
from ktpy.host import resolvconf
from ktpy.host.journal import Change, Journal
from ktpy.host.resolvconf import RESOLV_CONF
from ktpy.host.runner import Runner, check, run
from ktpy.host.undo import ResolvConfRestore, ResolvedRevert

NSSWITCH = Path("/etc/nsswitch.conf")
RESOLVED_UPLINK = Path("/run/systemd/resolve/resolv.conf")  # resolved's list of real servers
STUB_ADDRESSES = frozenset({"127.0.0.53", "127.0.0.54"})
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class ResolverKind(StrEnum):
    RESOLVED = "systemd-resolved"
    RESOLV_CONF = "resolv.conf"


@dataclass(frozen=True)
class ResolverChoice:
    kind: ResolverKind
    reason: str


def resolved_running(runner: Runner = run) -> bool:
    """Whether systemd-resolved answers on this namespace's system bus. Asks the bus who
    owns the name rather than calling resolved, which would start it by D-Bus activation."""
    done = runner(
        [
            "busctl",
            "--system",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            "org.freedesktop.resolve1",
        ]
    )
    if done.ok:
        return done.stdout.split() == ["b", "true"]
    if done.returncode == 127:  # no busctl: ask resolvectl instead
        return runner(["resolvectl", "status"]).ok
    return False


def _uses_nss_resolve(nsswitch: bytes) -> bool:
    for line in nsswitch.splitlines():
        words = line.split(b"#", 1)[0].split()
        if words[:1] == [b"hosts:"]:
            return any(word == b"resolve" for word in words[1:])
    return False


def choose_resolver(
    resolved: bool, resolv_conf: bytes | None, nsswitch: bytes | None
) -> ResolverChoice:
    """Pure: which backend fits, and why (for ``--debug`` and the connect summary)."""
    if not resolved:
        return ResolverChoice(ResolverKind.RESOLV_CONF, "systemd-resolved is not running")
    servers = resolvconf.nameservers(resolv_conf or b"")
    if servers and all(server in STUB_ADDRESSES for server in servers):
        return ResolverChoice(
            ResolverKind.RESOLVED, "/etc/resolv.conf points at systemd-resolved's stub"
        )
    if nsswitch is not None and _uses_nss_resolve(nsswitch):
        return ResolverChoice(ResolverKind.RESOLVED, "nsswitch.conf asks systemd-resolved")
    return ResolverChoice(
        ResolverKind.RESOLV_CONF,
        "systemd-resolved runs, but /etc/resolv.conf names other servers, so programs"
        " do not ask it",
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def detect_resolver(
    runner: Runner = run, resolv_conf: Path = RESOLV_CONF, nsswitch: Path = NSSWITCH
) -> ResolverChoice:
    return choose_resolver(resolved_running(runner), _read(resolv_conf), _read(nsswitch))


def upstream_nameservers(
    choice: ResolverChoice, resolv_conf: Path = RESOLV_CONF, uplink: Path = RESOLVED_UPLINK
) -> list[str]:
    """The laptop's own DNS servers, for ktpy's DNS server to forward non-cluster names
    to. Read before ktpy changes anything; ktpy's own blocks and resolved's stub are left
    out. With systemd-resolved these are its uplink servers (its stub would send names
    under ktpy's routing domains straight back to ktpy)."""
    path = uplink if choice.kind is ResolverKind.RESOLVED else resolv_conf
    text = _read(path) or b""
    return [s for s in resolvconf.nameservers(text) if s not in STUB_ADDRESSES]


def laptop_search_domains(
    choice: ResolverChoice, resolv_conf: Path = RESOLV_CONF, uplink: Path = RESOLVED_UPLINK
) -> list[str]:
    """The laptop's own search domains, read before ktpy changes anything (with
    systemd-resolved: every link's, from its list of real servers)."""
    path = uplink if choice.kind is ResolverKind.RESOLVED else resolv_conf
    return resolvconf.search_domains(_read(path) or b"")


def check_domain(domain: str) -> str:
    """A DNS domain without a leading ``~`` or trailing dot; refuses the root."""
    name = domain.strip().lower().removeprefix("~").rstrip(".")
    if not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(
            f"{domain!r} is not a domain ktpy can route (the root would catch every name)"
        )
    return name


def _resolved_steps(
    link: str,
    servers: Sequence[str],
    routing_domains: Sequence[str],
    search_domains: Sequence[str],
) -> list[tuple[list[str], str]]:
    """The resolvectl calls that give ``link`` ktpy's settings, and what each does."""
    return [
        (["dns", link, *servers], "set its DNS servers"),
        (["domain", link, *_domain_args(routing_domains, search_domains)], "set its DNS domains"),
        (["default-route", link, "false"], "keep other names off it"),
        (["llmnr", link, "no"], "turn LLMNR off on it"),
        (["mdns", link, "no"], "turn mDNS off on it"),
        (["dnsovertls", link, "no"], "turn DNS-over-TLS off on it"),
        (["dnssec", link, "no"], "turn DNSSEC off on it"),
    ]


def configure_resolved(
    journal: Journal,
    *,
    link: str,
    servers: Sequence[str],
    routing_domains: Sequence[str],
    search_domains: Sequence[str] = (),
    runner: Runner = run,
) -> None:
    """Per-link DNS for ``link``: ``servers`` answer names under ``routing_domains`` (and
    ``search_domains``, which single-label names are also tried under) and nothing else.

    LLMNR, mDNS, DNS-over-TLS and DNSSEC are turned off on the link: each defaults to the
    global setting, and a strict global DNSOverTLS or DNSSEC would make every query to
    ktpy's plain, unsigned server fail."""
    if not servers:
        raise ValueError("at least one DNS server is needed")
    steps = _resolved_steps(link, servers, routing_domains, search_domains)  # refuses first
    journal.record(Change(f"systemd-resolved settings of {link}", ResolvedRevert(link)))
    for args, what in steps:
        check(runner(["resolvectl", *args]), f"{what} ({link}, systemd-resolved)")


def _domain_args(routing_domains: Sequence[str], search_domains: Sequence[str]) -> list[str]:
    routing = [f"~{check_domain(d)}" for d in routing_domains]
    search = [check_domain(d) for d in search_domains]
    if not routing and not search:
        raise ValueError("at least one domain is needed")
    return [*routing, *search]


def set_domains(
    journal: Journal,
    *,
    link: str,
    routing_domains: Sequence[str],
    search_domains: Sequence[str] = (),
    runner: Runner = run,
) -> None:
    """Replace the routing and search domains of ``link``, set up earlier by
    ``configure_resolved`` (namespaces made or deleted while connected). No new
    journal entry: the pending ``ResolvedRevert`` of the link drops these as well;
    without one this refuses, since nothing would undo the change."""
    domains = _domain_args(routing_domains, search_domains)
    covered = any(
        entry.change.undo == ResolvedRevert(link) for entry in journal.contents().pending()
    )
    if not covered:
        raise KtpyError(f"no pending systemd-resolved revert of {link} in the journal")
    check(runner(["resolvectl", "domain", link, *domains]), f"set its DNS domains ({link})")


@dataclass(frozen=True)
class ResolvConfEdit:
    path: Path
    original_nameservers: tuple[str, ...]
    warnings: tuple[str, ...]


def configure_resolv_conf(
    journal: Journal, *, servers: Sequence[str], path: Path = RESOLV_CONF
) -> ResolvConfEdit:
    """Put ``servers`` first in ``path``, between markers naming the session, in place."""
    try:
        original = path.read_bytes()
    except OSError as exc:
        raise KtpyError(
            f"cannot read {path}: {exc.strerror}",
            hint="ktpy adds its DNS server to an existing resolv.conf; it does not create one.",
        ) from exc
    written = resolvconf.with_nameservers(original, journal.session, servers)
    warnings: list[str] = []
    if resolvconf.rotates(original):
        warnings.append(
            f"{path} has 'options rotate': some cluster names may go to the original"
            " nameservers and fail"
        )
    if stale := resolvconf.sessions_in(original):
        warnings.append(
            f"{path} still holds lines of ktpy session(s) {', '.join(stale)};"
            " run 'sudo ktpy clean --local'"
        )
    journal.record(
        Change(
            f"ktpy's DNS server first in {path}",
            ResolvConfRestore(str(path), journal.session, original, written),
        )
    )
    try:
        resolvconf.write_in_place(path, written)
    except OSError as exc:
        raise KtpyError(f"cannot write {path}: {exc.strerror}") from exc
    return ResolvConfEdit(path, tuple(resolvconf.nameservers(original)), tuple(warnings))


@dataclass(frozen=True)
class ResolverSetup:
    choice: ResolverChoice
    upstreams: tuple[str, ...]  # where ktpy's DNS server sends non-cluster names
    warnings: tuple[str, ...] = ()


def configure_resolver(
    journal: Journal,
    choice: ResolverChoice,
    *,
    link: str,
    server: str,
    routing_domains: Sequence[str],
    search_domains: Sequence[str] = (),
    runner: Runner = run,
    resolv_conf: Path = RESOLV_CONF,
) -> ResolverSetup:
    """Send cluster names to ``server`` with the chosen backend. In resolv.conf mode the
    domains are not used: every name reaches ktpy's server, which decides."""
    upstreams = tuple(upstream_nameservers(choice, resolv_conf))
    if choice.kind is ResolverKind.RESOLVED:
        configure_resolved(
            journal,
            link=link,
            servers=[server],
            routing_domains=routing_domains,
            search_domains=search_domains,
            runner=runner,
        )
        return ResolverSetup(choice, upstreams)
    edit = configure_resolv_conf(journal, servers=[server], path=resolv_conf)
    warnings = edit.warnings
    if not upstreams:
        warnings += (f"{resolv_conf} names no nameserver to forward other names to",)
    return ResolverSetup(choice, upstreams, warnings)


class ResolverGuard:
    """Keeps ktpy's part of the resolver in place while the session lives.

    Another program may change it meanwhile (a DHCP lease renewed, NetworkManager,
    a VPN client rewriting resolv.conf; ``resolvectl revert`` on ktpy's link);
    cluster names would then stop resolving. Every ``period`` the part is looked
    at (``broken``); if it is gone it is put back (``repair``), and each repair, or
    why there was none, is one line through ``say``. A program that keeps changing
    it wins after ``max_repairs`` in a minute: ktpy says so and stops fighting.
    """

    what = "the resolver"

    def __init__(
        self, say: Callable[[str], None], *, period: float = 1.0, max_repairs: int = 5
    ) -> None:
        self.say = say
        self.period = period
        self.max_repairs = max_repairs
        self.repairs: list[float] = []  # monotonic times of the repairs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def broken(self) -> bool:
        raise NotImplementedError

    def repair(self) -> None:
        raise NotImplementedError

    def start(self) -> ResolverGuard:
        self._thread = threading.Thread(target=self._run, name="resolver-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; returns once no repair is under way (teardown comes next)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if not self.check():
                return

    def check(self, now: float | None = None) -> bool:
        """Look once and repair if needed; False once it has given up."""
        now = time.monotonic() if now is None else now
        try:
            if not self.broken():
                return True
        except (OSError, KtpyError) as exc:
            message = exc.format_message() if isinstance(exc, KtpyError) else exc.strerror
            self.say(f"cannot look at {self.what} to keep ktpy's DNS server in it: {message}")
            return True
        self.repairs = [t for t in self.repairs if now - t < 60] + [now]
        if len(self.repairs) > self.max_repairs:
            self.say(
                f"{self.what} keeps being changed by another program ({self.max_repairs} "
                "repairs in a minute): ktpy stops putting its DNS server back; cluster "
                "names may not resolve until that program stops"
            )
            return False
        try:
            self.repair()
        except (OSError, KtpyError) as exc:
            message = exc.format_message() if isinstance(exc, KtpyError) else exc.strerror
            self.say(
                f"{self.what}: changed by another program; cannot put ktpy's DNS server "
                f"back: {message}"
            )
            return True
        self.say(f"{self.what}: changed by another program; ktpy's DNS server is back")
        return True


class ResolvConfGuard(ResolverGuard):
    """resolv.conf: ktpy's block back in front of what the other program wrote,
    journalled first like any change (its undo gives the other program's version
    back, and the first undo then finds the file replaced and leaves it)."""

    def __init__(
        self,
        journal: Journal,
        servers: Sequence[str],
        say: Callable[[str], None],
        *,
        path: Path = RESOLV_CONF,
        period: float = 1.0,
        max_repairs: int = 5,
    ) -> None:
        super().__init__(say, period=period, max_repairs=max_repairs)
        self.journal = journal
        self.servers = tuple(servers)
        self.path = path
        self.what = str(path)

    def broken(self) -> bool:
        current = self.path.read_bytes()
        return resolvconf.repaired(current, self.journal.session, self.servers) is not None

    def repair(self) -> None:
        current = self.path.read_bytes()
        wanted = resolvconf.repaired(current, self.journal.session, self.servers)
        if wanted is None:
            return
        self.journal.record(
            Change(
                f"ktpy's DNS server first again in {self.path} (rewritten by another program)",
                ResolvConfRestore(str(self.path), self.journal.session, current, wanted),
            )
        )
        resolvconf.write_in_place(self.path, wanted)


class ResolvedGuard(ResolverGuard):
    """systemd-resolved: ktpy's link settings set again (``resolvectl revert`` by
    someone else, or resolved restarted without them). Their undo is journalled
    already: reverting the link undoes a repair too."""

    def __init__(
        self,
        link: str,
        servers: Sequence[str],
        routing_domains: Sequence[str],
        search_domains: Sequence[str],
        say: Callable[[str], None],
        *,
        runner: Runner = run,
        period: float = 1.0,
        max_repairs: int = 5,
    ) -> None:
        super().__init__(say, period=period, max_repairs=max_repairs)
        self.steps = _resolved_steps(link, servers, routing_domains, search_domains)
        self.link = link
        self.servers_list = tuple(servers)
        self.servers = tuple(servers)
        self.runner = runner
        self.what = f"systemd-resolved's settings of {link}"

    def broken(self) -> bool:
        shown = check(self.runner(["resolvectl", "dns", self.link]), "read its DNS servers")
        return not all(server in shown.stdout.split() for server in self.servers)

    def follow_domains(self, routing_domains: Sequence[str], search_domains: Sequence[str]) -> None:
        """The link's domains changed on purpose (namespaces made or deleted while
        connected): a repair puts back these, not the ones connect started with."""
        self.steps = _resolved_steps(self.link, self.servers_list, routing_domains, search_domains)

    def repair(self) -> None:
        for args, what in self.steps:
            check(self.runner(["resolvectl", *args]), f"{what} ({self.link}, systemd-resolved)")
