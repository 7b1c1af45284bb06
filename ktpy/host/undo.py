"""Every undo ktpy can journal, as data, and how each is carried out.

An undo is written to the journal before its change is made, so it must be
harmless when the change never happened, and harmless when run a second time
(a ``clean --local`` interrupted half-way runs again). Each one therefore
checks, when its command fails, whether there is anything left to undo:
deleting a route that is not there, or reverting the DNS settings of a link
that vanished with its process, counts as done.

The set is closed on purpose: a journal names undos by ``kind``, and a kind
this version does not know is refused rather than guessed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ktpy.errors import BadJournalEntry, UndoFailed
from ktpy.host import resolvconf
from ktpy.host.runner import Runner


def _link_exists(runner: Runner, name: str) -> bool:
    return runner(["ip", "link", "show", "dev", name]).ok


@dataclass(frozen=True)
class LinkDelete:
    """Delete a network device ktpy made (its TUN device). The device also vanishes when
    ktpy's process dies, taking its addresses and routes with it."""

    name: str
    kind: ClassVar[str] = "link-delete"

    def carry_out(self, runner: Runner) -> str | None:
        done = runner(["ip", "link", "delete", "dev", self.name])
        if done.ok or not _link_exists(runner, self.name):
            return None
        raise UndoFailed(f"cannot delete device {self.name}: {done.describe()}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkDelete:
        return cls(name=str(data["name"]))


@dataclass(frozen=True)
class RouteDelete:
    """Delete one route through ktpy's device. Naming the device means a route with the
    same destination through another device (a VPN's) can never be the one deleted."""

    destination: str
    device: str
    table: str = "main"
    kind: ClassVar[str] = "route-delete"

    def _present(self, runner: Runner) -> bool:
        family = "-6" if ":" in self.destination else "-4"
        listed = runner(
            ["ip", "-j", family, "route", "show", "table", self.table, "exact", self.destination]
        )
        if not listed.ok:
            raise UndoFailed(f"cannot list routes: {listed.describe()}")
        routes = json.loads(listed.stdout or "[]")
        return any(route.get("dev") == self.device for route in routes)

    def carry_out(self, runner: Runner) -> str | None:
        done = runner(
            ["ip", "route", "del", self.destination, "dev", self.device, "table", self.table]
        )
        # A missing device is the usual case after a kill -9: the route went with it.
        if done.ok or not _link_exists(runner, self.device) or not self._present(runner):
            return None
        raise UndoFailed(
            f"cannot delete route {self.destination} dev {self.device}: {done.describe()}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "device": self.device, "table": self.table}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouteDelete:
        return cls(
            destination=str(data["destination"]),
            device=str(data["device"]),
            table=str(data.get("table", "main")),
        )


@dataclass(frozen=True)
class ResolvedRevert:
    """Drop the DNS servers, domains and flags ktpy gave systemd-resolved for its link.
    systemd-resolved forgets a link's settings when the link goes, so a vanished
    device, or a resolved that is no longer running, leaves nothing to revert."""

    link: str
    kind: ClassVar[str] = "resolved-revert"

    def carry_out(self, runner: Runner) -> str | None:
        done = runner(["resolvectl", "revert", self.link])
        if done.ok or not _link_exists(runner, self.link):
            return None
        if not runner(["resolvectl", "status"]).ok:
            return f"systemd-resolved is not running; nothing to revert on {self.link}"
        raise UndoFailed(f"cannot revert DNS settings of {self.link}: {done.describe()}")

    def to_json(self) -> dict[str, Any]:
        return {"link": self.link}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResolvedRevert:
        return cls(link=str(data["link"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class ResolvConfRestore:
    """Put resolv.conf back exactly as it was, unless someone changed it meanwhile: then
    take out only ktpy's marked lines (``resolvconf.restore`` decides)."""

    path: str
    session: str
    original: bytes
    written: bytes
    kind: ClassVar[str] = "resolv-conf-restore"

    def carry_out(self, runner: Runner) -> str | None:
        del runner  # a file, not a command
        path = Path(self.path)
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            return f"{path} is gone; nothing to restore"
        except OSError as exc:
            raise UndoFailed(f"cannot read {path}: {exc.strerror}") from exc
        decision = resolvconf.restore(current, self.original, self.written, self.session)
        if decision.content is not None:
            try:
                resolvconf.write_in_place(path, decision.content)
            except OSError as exc:
                raise UndoFailed(f"cannot write {path}: {exc.strerror}") from exc
        return None if decision.note is None else f"{path}: {decision.note}"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "session": self.session,
            "original_base64": _b64(self.original),
            "written_base64": _b64(self.written),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResolvConfRestore:
        return cls(
            path=str(data["path"]),
            session=str(data["session"]),
            original=base64.b64decode(data["original_base64"], validate=True),
            written=base64.b64decode(data["written_base64"], validate=True),
        )


Undo = LinkDelete | RouteDelete | ResolvedRevert | ResolvConfRestore
_KINDS: dict[str, type[Undo]] = {
    cls.kind: cls for cls in (LinkDelete, RouteDelete, ResolvedRevert, ResolvConfRestore)
}


def undo_to_json(undo: Undo) -> dict[str, Any]:
    return {"kind": undo.kind, **undo.to_json()}


def undo_from_json(data: Any) -> Undo:
    if not isinstance(data, dict):
        raise BadJournalEntry(f"an undo must be an object, not {type(data).__name__}")
    kind = data.get("kind")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise BadJournalEntry(f"unknown undo kind {kind!r}")
    try:
        return cls.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadJournalEntry(f"bad {kind} undo: {exc}") from exc
