"""ktpy connect in a terminal (issue 18): a wait over a second is one live line
redrawn in place with the elapsed time, and Ctrl-C typed at the terminal ends the
session with its one line."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from datetime import datetime

from tests.e2e.conftest import Laptop
from tests.e2e.testbed import config, hostnet

FRAME = re.compile(r"\r\x1b\[K([^\r\n]*)")


def _read(fd: int, until: bytes, timeout: float, buf: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal's other end closed: the command ended
            return until in buf
        if not data:
            return until in buf
        buf += data
        if until in buf:
            return True
    return False


def test_connect_in_a_terminal_shows_live_waits_and_its_ctrl_c_line(laptop: Laptop) -> None:
    env = {
        **os.environ,
        "PATH": f"{config.BIN_DIR}:{os.environ['PATH']}",
        "KUBECONFIG": str(config.KUBECONFIG_DIR / "admin.yaml"),
        "PYTHONPATH": str(config.REPO_ROOT),
    }
    argv = [*hostnet.laptop_command(laptop.name), sys.executable, "-m", "ktpy", "connect"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a shell's foreground job on this terminal
        os.chdir(config.REPO_ROOT)
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv, no shell
    output = bytearray()
    try:
        assert _read(fd, b"All looks good", 60, output), output.decode(errors="replace")
        started = len(output)
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal signals the foreground job
        assert _read(fd, b"Stopped by Ctrl-C after", 60, output), output.decode(errors="replace")
        _read(fd, b"\n", 5, output)
    finally:
        deadline = time.monotonic() + 10
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT, text
    ending = [line for line in text[started:].splitlines() if "Stopped by Ctrl-C after" in line]
    assert len(ending) == 1, text
    assert "removed the TUN device, its routes and the resolver settings" in ending[0]

    # The shadow pod's start: no line under a second, else one redrawn line. How long
    # the wait took comes from ktpy's own log: from "shadow pod created" to "tunnel
    # up", less the tunnel's part ("pod Ready after P s, tunnel up after T s").
    plain = ANSI.sub("", text)
    created, tunnel = (_logged_at(plain, event) for event in ("shadow pod created", "tunnel up"))
    ready = re.search(r"pod Ready after ([\d.]+)s, tunnel up after ([\d.]+)s", plain)
    assert ready, text
    waited = tunnel - created - (float(ready.group(2)) - float(ready.group(1)))
    frames = [f for f in FRAME.findall(plain[:started]) if f.startswith("Starting shadow pod")]
    # The log's time runs a little ahead of the wait's own (logged just before it
    # starts, rounded tunnel time): a line must show only when it surely took longer.
    if waited < 0.9:
        assert not frames, (waited, frames)
    elif waited > 1.5:
        assert frames, (waited, text)
    if frames:
        assert re.fullmatch(r"Starting shadow pod \S+: done after [\d.]+s", frames[-1]), frames
        times = [float(m) for f in frames[:-1] for m in re.findall(r"\.\.\. ([\d.]+)s$", f)]
        assert times, frames
        assert times == sorted(times), frames  # elapsed time counts up in place
        assert times[0] >= 1.0  # nothing before a second


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _logged_at(text: str, event: str) -> float:
    """When ktpy logged `event` (its console log lines start with an ISO time)."""
    line = next(line for line in text.splitlines() if event in line and line[:4].isdigit())
    stamp = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
    return stamp.timestamp()
