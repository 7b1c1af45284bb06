"""Fixtures for the host module's integration tests: laptop-like namespaces from the
test bed's ``hostnet`` (a network namespace and a mount namespace of their own, with
a plain resolv.conf or a systemd-resolved), and ``python -m ktpy.host`` run inside.

Needs root, iproute2, nsenter, /dev/net/tun, and for the resolved flavour
dbus-daemon and systemd-resolved. Outside CI these tests skip without them; with
CI=true they fail instead, so a broken machine cannot pass silently.

Laptop numbers: this suite uses 56..63 of the integration range, one per test.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ktpy.host.snapshot import Snapshot
from tests.e2e.testbed import config, hostnet
from tests.integration import support

TOOLS = ("ip", "nsenter", "unshare", "mountpoint")
RESOLVED_TOOLS = ("dbus-daemon", "resolvectl", "busctl")
NUMBERS = range(56, 64)
assert set(NUMBERS) <= set(config.INTEGRATION_LAPTOPS)
READY_TIMEOUT = 30.0


def unavailable(reason: str) -> None:
    support.unavailable("host", reason)


@pytest.fixture(scope="session")
def host_tools() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (network and mount namespaces, TUN devices)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)}")
    if not Path("/dev/net/tun").exists():
        unavailable("no /dev/net/tun")


@dataclass
class Running:
    """``python -m ktpy.host connect`` running in a laptop."""

    process: hostnet.LaptopProcess
    ready: dict[str, Any]
    _lines: queue.Queue[str | None] = field(repr=False)

    def stop(self, signum: int = signal.SIGTERM) -> dict[str, Any]:
        """Signal it; for SIGTERM return its undo report."""
        self.process.send_signal(signum)
        self.process.wait(timeout=READY_TIMEOUT)
        if signum == signal.SIGKILL:
            return {}
        line = self._lines.get(timeout=5)
        assert line is not None, f"no undo report; stderr: {self.process.stderr}"
        report: dict[str, Any] = json.loads(line)
        return report


@dataclass
class Laptop:
    name: str
    flavour: str
    number: int
    started: list[Running] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        return [*hostnet.laptop_command(self.name), *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*argv), capture_output=True, text=True, timeout=60, check=False
        )
        if check and done.returncode != 0:
            output = done.stdout + done.stderr
            raise AssertionError(
                f"{' '.join(argv)} in {self.name}: exit {done.returncode}\n{output}"
            )
        return done

    def ktpy_host(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "ktpy.host", *args, check=check)

    def snapshot(self) -> Snapshot:
        return Snapshot.from_json(self.ktpy_host("snapshot").stdout)

    def connect(self, journal_dir: Path, session: str, *args: str) -> Running:
        argv = self.command(
            sys.executable,
            "-m",
            "ktpy.host",
            "connect",
            "--journal-dir",
            str(journal_dir),
            "--session",
            session,
            *args,
        )
        process = hostnet.LaptopProcess(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            process.kill()
            raise AssertionError(f"connect in {self.name} not ready in time") from None
        if line is None:
            process.wait()
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"connect in {self.name} failed: {stderr}")
        running = Running(process, json.loads(line), lines)
        self.started.append(running)
        return running

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until the kernel has finished its own changes to a fresh namespace: its
        IPv6 link-local addresses leave the 'tentative' state (duplicate address
        detection) a second or two after the link comes up, and a snapshot taken
        before that would differ from every later one."""
        deadline = time.monotonic() + timeout
        while self.run("ip", "-o", "-6", "addr", "show", "tentative").stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: IPv6 addresses still tentative")
            time.sleep(0.2)

    def routes(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.run("ip", "-j", "route", "show").stdout)
        return found


MakeLaptop = Callable[[int, str], Laptop]


@pytest.fixture
def make_laptop(host_tools: None) -> Iterator[MakeLaptop]:
    made: list[Laptop] = []

    def make(number: int, flavour: str) -> Laptop:
        assert number in NUMBERS
        if flavour == "resolved":
            missing = [tool for tool in RESOLVED_TOOLS if shutil.which(tool) is None]
            if missing or not Path("/lib/systemd/systemd-resolved").exists():
                unavailable(
                    f"the resolved flavour needs {', '.join(missing) or 'systemd-resolved'}"
                )
        name = config.laptop_name(number)
        if Path(f"/run/netns/{name}").exists():
            hostnet.delete_laptop(name)  # left by a killed run of this suite
        laptop = Laptop(hostnet.create_laptop(number, flavour), flavour, number)
        made.append(laptop)
        laptop.settle()
        return laptop

    yield make
    for laptop in made:
        for running in laptop.started:
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait()
        hostnet.delete_laptop(laptop.name)
