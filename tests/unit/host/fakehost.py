"""A scripted stand-in for the host's ``ip`` and ``resolvectl``, at ktpy's Runner seam.

It keeps just enough state (links, routes per table, resolved links) to answer
the commands ``ktpy.host`` runs, the way iproute2 and resolvectl answer them,
including their failures (exit 1 or 2 and a message). Anything else fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ktpy.host.runner import Completed


@dataclass
class FakeHost:
    links: set[str] = field(default_factory=lambda: {"lo", "eth0"})
    # (table, destination, device)
    routes: set[tuple[str, str, str]] = field(default_factory=set)
    resolved_links: dict[str, list[str]] = field(default_factory=dict)
    resolved_running: bool = True
    calls: list[tuple[str, ...]] = field(default_factory=list)
    # Called before each command: tests use it to look at the journal at that moment.
    before: Callable[[tuple[str, ...]], None] | None = None
    # argv prefixes that fail with this (returncode, stderr), to inject trouble.
    failing: dict[tuple[str, ...], tuple[int, str]] = field(default_factory=dict)

    def __call__(self, argv: Sequence[str]) -> Completed:
        args = tuple(argv)
        self.calls.append(args)
        if self.before is not None:
            self.before(args)
        for prefix, (code, message) in self.failing.items():
            if args[: len(prefix)] == prefix:
                return Completed(args, code, "", message)
        if args[0] == "ip":
            return self._ip(args)
        if args[0] == "resolvectl":
            return self._resolvectl(args)
        raise AssertionError(f"unexpected command {args}")

    @staticmethod
    def _ok(args: tuple[str, ...], stdout: str = "") -> Completed:
        return Completed(args, 0, stdout, "")

    @staticmethod
    def _fail(args: tuple[str, ...], code: int, message: str) -> Completed:
        return Completed(args, code, "", message + "\n")

    def _ip(self, args: tuple[str, ...]) -> Completed:
        words = list(args[1:])
        json_out = "-j" in words
        words = [w for w in words if w not in ("-j", "-4", "-6")]
        match words:
            case ["link", "show", "dev", name]:
                if name in self.links:
                    return self._ok(args, f"7: {name}: <POINTOPOINT,UP> mtu 1500\n")
                return self._fail(args, 1, f'Device "{name}" does not exist.')
            case ["link", "delete", "dev", name]:
                if name not in self.links:
                    return self._fail(args, 1, f'Cannot find device "{name}"')
                self.links.discard(name)
                self.routes = {r for r in self.routes if r[2] != name}
                self.resolved_links.pop(name, None)
                return self._ok(args)
            case ["route", "add", dst, "dev", dev, *rest]:
                if dev not in self.links:
                    return self._fail(args, 1, f'Cannot find device "{dev}"')
                if any(r[:2] == ("main", dst) for r in self.routes):
                    return self._fail(args, 2, "RTNETLINK answers: File exists")
                del rest
                self.routes.add(("main", dst, dev))
                return self._ok(args)
            case ["route", "del", dst, "dev", dev, "table", table]:
                if dev not in self.links:
                    return self._fail(args, 1, f'Cannot find device "{dev}"')
                if (table, dst, dev) not in self.routes:
                    return self._fail(args, 2, "RTNETLINK answers: No such process")
                self.routes.discard((table, dst, dev))
                return self._ok(args)
            case ["route", "show", "table", table, "exact", dst] if json_out:
                found = [{"dst": d, "dev": v} for t, d, v in self.routes if (t, d) == (table, dst)]
                return self._ok(args, json.dumps(found))
        raise AssertionError(f"unexpected ip command {args}")

    def _resolvectl(self, args: tuple[str, ...]) -> Completed:
        if not self.resolved_running:
            return self._fail(
                args,
                1,
                "Failed to get global data: Unit dbus-org.freedesktop.resolve1.service not found.",
            )
        match args[1:]:
            case ["status"]:
                return self._ok(args, "Global\n")
            case ["revert", link]:
                if link not in self.links:
                    return self._fail(
                        args, 1, f'Failed to resolve interface "{link}": No such device'
                    )
                self.resolved_links.pop(link, None)
                return self._ok(args)
            case [setting, link, *values]:
                if link not in self.links:
                    return self._fail(
                        args, 1, f'Failed to resolve interface "{link}": No such device'
                    )
                self.resolved_links.setdefault(link, []).append(" ".join([setting, *values]))
                return self._ok(args)
        raise AssertionError(f"unexpected resolvectl command {args}")
