"""A mitmproxy-style Playbook for ktpy's pure protocol machines.

    assert (
        Playbook(Socks5Handshake())
        >> b"\\x05\\x01\\x00"
        << Send(b"\\x05\\x00")
    )

``>>`` feeds an input (bytes, or an ``Opened``/``Failed`` outcome of a
connection attempt), ``<<`` states the next command the machine must emit.
The script runs when the playbook is evaluated as a bool; every emitted
command must be expected, in order, and nothing may be left over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ktpy.net.socks5 import Command, ReplyCode, Socks5Handshake


@dataclass(frozen=True)
class Opened:
    host: str = "0.0.0.0"
    port: int = 0


@dataclass(frozen=True)
class Failed:
    code: ReplyCode


Input = bytes | Opened | Failed


@dataclass
class Playbook:
    machine: Socks5Handshake
    steps: list[tuple[str, Any]] = field(default_factory=list)

    def __rshift__(self, event: Input) -> Playbook:
        self.steps.append((">>", event))
        return self

    def __lshift__(self, command: Command) -> Playbook:
        self.steps.append(("<<", command))
        return self

    def _feed(self, event: Input) -> list[Command]:
        if isinstance(event, bytes):
            return self.machine.receive_data(event)
        if isinstance(event, Opened):
            return self.machine.connection_opened(event.host, event.port)
        return self.machine.connection_failed(event.code)

    def __bool__(self) -> bool:
        pending: list[Command] = []
        transcript: list[str] = []
        for direction, item in self.steps:
            if direction == ">>":
                if pending:
                    transcript.append(f"!! unexpected, before next input: {pending}")
                    raise AssertionError("\n".join(transcript))
                transcript.append(f">> {item!r}")
                pending = list(self._feed(item))
            else:
                transcript.append(f"<< {item!r}")
                if not pending:
                    transcript.append("!! nothing was emitted")
                    raise AssertionError("\n".join(transcript))
                actual = pending.pop(0)
                if actual != item:
                    transcript.append(f"!! emitted instead: {actual!r}")
                    raise AssertionError("\n".join(transcript))
        if pending:
            transcript.append(f"!! left over: {pending}")
            raise AssertionError("\n".join(transcript))
        return True
