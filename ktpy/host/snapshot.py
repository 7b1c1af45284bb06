"""A picture of everything ktpy could change on the laptop, and the difference
between two pictures: for the tests that prove connect leaves the laptop as it
found it, and for ``ktpy doctor``.

Counters, lifetimes and other values that change on their own are left out
(``nft -s``; ``valid_lft``/``preferred_lft``/``expires`` blanked), so two
pictures of an untouched laptop are equal.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ktpy.host.resolvconf import RESOLV_CONF
from ktpy.host.resolver import resolved_running
from ktpy.host.runner import Runner, run

HOSTS = Path("/etc/hosts")
PROC_SYS = Path("/proc/sys")
# Sysctls that decide how the laptop routes and filters; ktpy sets none of them
# host-wide today, and the snapshot proves it stays that way.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.all.src_valid_mark",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
)

_VOLATILE = re.compile(r"\b(valid_lft|preferred_lft|expires) \S+")


def _blank_volatile(text: str) -> str:
    return _VOLATILE.sub(r"\1 -", text)


def _resolved_settings(status: str) -> str:
    """`resolvectl status` without its runtime state: which server resolved last
    picked ("Current DNS Server") comes and goes with queries and moves the column
    alignment; it is not a setting anyone changed."""
    lines = [line.strip() for line in status.splitlines()]
    return "\n".join(line for line in lines if not line.startswith("Current DNS Server:")) + "\n"


@dataclass(frozen=True)
class Snapshot:
    sections: Mapping[str, str]

    def to_json(self) -> str:
        return json.dumps(dict(self.sections), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        return cls(MappingProxyType({str(k): str(v) for k, v in data.items()}))


def _command(runner: Runner, argv: list[str]) -> str:
    done = runner(argv)
    if done.ok:
        return done.stdout
    return f"<{done.describe()}>\n"


def _file(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "backslashreplace")
    except FileNotFoundError:
        return "<missing>\n"
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>\n"


def _sysctls(proc_sys: Path) -> str:
    lines = []
    for name in SYSCTLS:
        value = _file(proc_sys / name.replace(".", "/")).strip()
        lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def take(
    runner: Runner = run,
    *,
    resolv_conf: Path = RESOLV_CONF,
    hosts: Path = HOSTS,
    proc_sys: Path = PROC_SYS,
) -> Snapshot:
    """Everything ktpy could touch, in this process's network and mount namespace."""
    sections = {
        "ip -4 rule": _command(runner, ["ip", "-4", "rule", "show"]),
        "ip -6 rule": _command(runner, ["ip", "-6", "rule", "show"]),
        "ip -4 route table all": _command(runner, ["ip", "-4", "route", "show", "table", "all"]),
        "ip -6 route table all": _command(runner, ["ip", "-6", "route", "show", "table", "all"]),
        "ip link": _command(runner, ["ip", "link", "show"]),
        "ip addr": _command(runner, ["ip", "addr", "show"]),
        "nft ruleset": _command(runner, ["nft", "-s", "list", "ruleset"]),
        "sysctls": _sysctls(proc_sys),
        "/etc/hosts": _file(hosts),
        "/etc/resolv.conf": _file(resolv_conf),
    }
    if resolved_running(runner):
        status = _command(runner, ["resolvectl", "status", "--no-pager"])
        sections["resolvectl status"] = _resolved_settings(status)
    return Snapshot(MappingProxyType({k: _blank_volatile(v) for k, v in sections.items()}))


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """Unified-diff lines per section that differs; empty when the two are equal."""
    lines: list[str] = []
    for name in sorted(set(before.sections) | set(after.sections)):
        old = before.sections.get(name, "<absent>\n")
        new = after.sections.get(name, "<absent>\n")
        if old == new:
            continue
        lines += difflib.unified_diff(
            old.splitlines(),
            new.splitlines(),
            fromfile=f"{name} (before)",
            tofile=f"{name} (after)",
            lineterm="",
        )
    return lines
