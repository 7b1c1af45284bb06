"""Progress of the waits a person sits through (image pull, pod start, endpoints
switching, a router getting ready): nothing for a wait under a second; then, on a
terminal, one live line with the elapsed time, redrawn in place and left as the
wait's outcome; elsewhere (a pipe, a CI log) one plain line when the wait starts
to be noticed and one when it ends.

Progress goes to stderr with the logs, never to stdout (results). With
``--log-format json`` it is off: every line there is one JSON object.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from ktpy.errors import Interrupted

# A wait shorter than this shows nothing.
NOTICE_AFTER = 1.0
# How often the live line is redrawn.
REDRAW_EVERY = 0.1
_CLEAR_LINE = "\r\x1b[K"

_enabled = True


def configure(*, enabled: bool) -> None:
    global _enabled
    _enabled = enabled


class Wait:
    """One wait's line(s): a fixed title, and the stage it is at. ``tick`` and
    ``finish`` take the time, so tests drive it with a scripted clock; ``waiting``
    calls them from a ticker thread."""

    def __init__(self, title: str, stream: TextIO, *, live: bool, started: float) -> None:
        self.title = title
        self.stage = ""
        self.stream = stream
        self.live = live
        self.started = started
        self.shown = False
        # What the caller found, for the last line (e.g. "not in time"); else done/failed.
        self.outcome: str | None = None
        self._lock = threading.Lock()

    def _text(self) -> str:
        return f"{self.title}: {self.stage}" if self.stage else self.title

    def update(self, stage: str) -> None:
        """A new stage of the same wait, e.g. from pulling the image to starting."""
        with self._lock:
            changed = stage != self.stage
            self.stage = stage
            if changed and self.shown and not self.live:
                self._write(f"{self._text()}...\n")

    def tick(self, now: float) -> None:
        with self._lock:
            elapsed = now - self.started
            if elapsed < NOTICE_AFTER:
                return
            if self.live:
                self._write(f"{_CLEAR_LINE}{self._text()}... {elapsed:.1f}s")
            elif not self.shown:
                self._write(f"{self._text()}...\n")
            self.shown = True

    def finish(self, now: float, outcome: str) -> None:
        with self._lock:
            if not self.shown:
                return
            prefix = _CLEAR_LINE if self.live else ""
            self._write(f"{prefix}{self.title}: {outcome} after {now - self.started:.1f}s\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@contextmanager
def waiting(
    title: str, *, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
) -> Iterator[Wait]:
    """Show a wait that lasts over a second; its last line says how it ended."""
    out = stream if stream is not None else sys.stderr
    live = bool(getattr(out, "isatty", lambda: False)())
    wait = Wait(title, out, live=live, started=clock())
    if not _enabled:
        yield wait
        return
    stop = threading.Event()

    def redraw() -> None:
        while not stop.wait(REDRAW_EVERY):
            wait.tick(clock())

    ticker = threading.Thread(target=redraw, name="progress", daemon=True)
    ticker.start()
    outcome = "failed"
    try:
        yield wait
        outcome = "done"
    except (KeyboardInterrupt, Interrupted):
        outcome = "stopped"
        raise
    finally:
        stop.set()
        ticker.join()
        wait.finish(clock(), wait.outcome or outcome)
