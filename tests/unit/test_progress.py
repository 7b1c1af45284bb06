"""The progress of a wait: nothing under a second; a live line on a terminal, plain
lines elsewhere; the last line says how it ended and after how long."""

import io
import threading

import pytest

from ktpy import progress
from ktpy.errors import Interrupted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_wait_under_a_second_shows_nothing() -> None:
    out = Terminal()
    wait = progress.Wait("Starting shadow pod p", out, live=True, started=10.0)
    wait.tick(10.9)
    wait.finish(10.95, "done")
    assert out.getvalue() == ""


def test_on_a_terminal_one_live_line_is_redrawn_with_the_elapsed_time() -> None:
    out = Terminal()
    wait = progress.Wait("Starting shadow pod p", out, live=True, started=10.0)
    wait.tick(11.2)
    wait.update("pulling the image if needed, creating the container")
    wait.tick(12.5)
    wait.finish(13.0, "done")
    text = out.getvalue()
    # One line: every redraw starts by going back to its start and clearing it.
    assert text.count("\n") == 1
    frames = text.split("\r\x1b[K")[1:]
    assert frames == [
        "Starting shadow pod p... 1.2s",
        "Starting shadow pod p: pulling the image if needed, creating the container... 2.5s",
        "Starting shadow pod p: done after 3.0s\n",
    ]


def test_elsewhere_plain_lines_without_redraws() -> None:
    out = io.StringIO()
    wait = progress.Wait("Starting shadow pod p", out, live=False, started=0.0)
    for now in (1.1, 1.2, 1.3):
        wait.tick(now)
    wait.update("started, waiting until Ready")
    wait.tick(2.0)
    wait.finish(2.25, "done")
    assert out.getvalue().splitlines() == [
        "Starting shadow pod p...",
        "Starting shadow pod p: started, waiting until Ready...",
        "Starting shadow pod p: done after 2.2s",
    ]
    assert "\r" not in out.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _until_shown(out: io.StringIO, clock: Clock) -> None:
    clock.now += 1.5
    for _ in range(200):  # the ticker redraws every 0.1s
        if out.getvalue():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the ticker never drew the line")


def test_waiting_says_how_the_wait_ended() -> None:
    out = io.StringIO()
    clock = Clock()
    with progress.waiting("Switching", stream=out, clock=clock) as wait:
        _until_shown(out, clock)
        wait.outcome = "not in time; going on"
    assert out.getvalue().splitlines()[-1] == "Switching: not in time; going on after 1.5s"

    out = io.StringIO()

    def interrupted_wait() -> None:
        with progress.waiting("Starting shadow pod p", stream=out, clock=clock):
            _until_shown(out, clock)
            raise Interrupted()

    with pytest.raises(Interrupted):
        interrupted_wait()
    assert out.getvalue().splitlines()[-1] == "Starting shadow pod p: stopped after 1.5s"


def test_off_with_json_logs() -> None:
    out = io.StringIO()
    clock = Clock()
    progress.configure(enabled=False)
    try:
        with progress.waiting("Switching", stream=out, clock=clock):
            clock.now += 5
            threading.Event().wait(0.3)
    finally:
        progress.configure(enabled=True)
    assert out.getvalue() == ""
