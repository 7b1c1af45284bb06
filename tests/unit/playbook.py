"""One mitmproxy-style Playbook for every protocol core (ktpy.sansio's vocabulary).

    assert (
        Playbook(Socks5Handshake())
        >> b"\\x05\\x01\\x00"
        << Send(b"\\x05\\x00")
    )

``>>`` feeds an input: bytes go to the core's ``receive``, an ``Event`` to its
``handle`` (followed by ``now`` for a core that is given the time, and by the
playbook's extra keyword arguments for ``receive``). ``<<`` states the next
action the core must emit: the action itself, or a ``Placeholder`` that takes
any action of one type and keeps it for later inputs. The script runs as it is
written: an action not expected before the next input, or left over at the end
(``assert pb``), fails with the transcript so far.

A core with more to script (the TCP stack: a clock, batches of packets,
matchers for packets) subclasses Playbook and extends ``run`` and ``mismatch``.
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar

from ktpy.sansio import Action, Event

A = TypeVar("A", bound=Action)


class Placeholder(Generic[A]):
    """Matches any action of one type; calling it returns the action matched."""

    def __init__(self, kind: type[A]) -> None:
        self.kind = kind
        self._action: A | None = None

    def __call__(self) -> A:
        assert self._action is not None, f"no {self.kind.__name__} matched yet"
        return self._action

    def match(self, action: Action) -> str | None:
        if not isinstance(action, self.kind):
            return f"not a {self.kind.__name__}"
        self._action = action
        return None

    def __repr__(self) -> str:
        return f"Placeholder({self.kind.__name__})"


class Playbook:
    def __init__(self, core: Any, *, now: float | None = None, **receive_options: Any) -> None:
        self.core = core
        self.now = now
        self.receive_options = receive_options
        self.transcript: list[str] = []
        self.pending: list[Action] = []

    # -- what a subclass extends ---------------------------------------------------

    def run(self, item: Any) -> list[Action]:
        """Feed one input to the core; the actions it returns."""
        clock = () if self.now is None else (self.now,)
        if isinstance(item, bytes | bytearray | memoryview):
            return list(self.core.receive(item, *clock, **self.receive_options))
        if isinstance(item, Event):
            return list(self.core.handle(item, *clock))
        raise TypeError(f"not an input for a core: {item!r}")

    def show(self, item: Any) -> str:
        return repr(item)

    def mismatch(self, expected: Any, actual: Action) -> str | None:
        """Why actual is not what was expected, or None if it is."""
        if isinstance(expected, Placeholder):
            return expected.match(actual)
        return None if actual == expected else "different action"

    # -- the script ------------------------------------------------------------------

    def fail(self, message: str) -> None:
        self.transcript.append(f"!! {message}")
        raise AssertionError("\n".join(self.transcript))

    def __rshift__(self, item: Any) -> Self:
        if self.pending:
            self.fail(f"unexpected, before the next input: {self.pending}")
        self.transcript.append(f">> {self.show(item)}")
        self.pending = self.run(item)
        return self

    def __lshift__(self, expected: Any) -> Self:
        self.transcript.append(f"<< {expected!r}")
        if not self.pending:
            self.fail("nothing was emitted")
        actual = self.pending.pop(0)
        problem = self.mismatch(expected, actual)
        if problem:
            self.fail(f"emitted instead: {actual!r}: {problem}")
        return self

    def __bool__(self) -> bool:
        if self.pending:
            self.fail(f"left over: {self.pending}")
        return True
