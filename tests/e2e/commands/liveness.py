"""What every session command must show on the bed: a session killed in laptop A is
judged from laptop B, a machine of its own, by its heartbeat alone.

From B, a session whose process was killed in A stays ``live`` until its
heartbeat is stale (``stale-after`` shortened to 10 s by configuration: short,
yet long enough for B's first `clean` to run well inside it on a busy machine), then
``stale``, never ``dead`` (B cannot see A's processes); ``clean`` from B leaves
it alone until then and removes it after; a live session in A is never touched.
Each command's test starts two sessions in A and hands them to ``killed_in_a``.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Bed, Laptop, RunningKtpy

INTERVAL = 2.0
STALE_AFTER = 10.0
BEATS = {"KTPY_HEARTBEAT_INTERVAL": f"{INTERVAL:g}s", "KTPY_STALE_AFTER": f"{STALE_AFTER:g}s"}


def session_id(running: RunningKtpy) -> str:
    """The session id from the 'Shadow pod ... (session ID)' line every command prints."""
    line = running.line_with("(session ")
    match = re.search(r"\(session ([a-z0-9]+)\)", line)
    assert match, line
    return match.group(1)


def ktpy(laptop: Laptop, namespace: str, *args: str) -> str:
    return laptop.run(sys.executable, "-m", "ktpy", "-n", namespace, *args, env=BEATS).stdout


def sessions(laptop: Laptop, namespace: str) -> dict[str, dict[str, Any]]:
    """`ktpy status` as `laptop` sees it, by session id."""
    rows = json.loads(ktpy(laptop, namespace, "status", "-o", "json"))
    return {row["session"]: row for row in rows}


def killed_in_a(
    bed: Bed,
    namespace: str,
    *,
    a: Laptop,
    b: Laptop,
    killed: RunningKtpy,
    live: RunningKtpy,
) -> str:
    """Kill -9 `killed` (running in laptop `a`, as `live` is) and judge it from laptop `b`
    as above. Returns the output of the `clean` that removed it."""
    victim, keeper = session_id(killed), session_id(live)
    seen = sessions(b, namespace)
    assert seen[victim]["state"] == seen[keeper]["state"] == "live"
    created = set(seen[victim]["objects"])
    kept = set(seen[keeper]["objects"])

    command = killed.proc.command_pid()  # type: ignore[attr-defined]
    killed.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    assert not Path(f"/proc/{command}").exists()
    # B has only the heartbeat, which is fresh: its clean must leave the session.
    early = ktpy(b, namespace, "clean")
    present = set(bed.ktpy_objects(namespace))
    in_time = time.monotonic() - killed_at < STALE_AFTER - INTERVAL
    assert in_time, "the first clean came too late to tell anything (a very busy machine?)"
    assert created <= present, f"clean from another laptop removed a live session: {early}"

    states = [sessions(b, namespace)[victim]["state"]]
    assert states == ["live"] or time.monotonic() - killed_at >= STALE_AFTER - INTERVAL, states
    while (state := sessions(b, namespace)[victim]["state"]) != "stale":
        states.append(state)
        assert time.monotonic() - killed_at < STALE_AFTER + 15, states
        time.sleep(0.3)
    became_stale = time.monotonic() - killed_at
    assert set(states) <= {"live", "stale"}, states  # never "dead": B cannot see A's pids
    # Its last heartbeat was at most one interval old when it was killed.
    # (to the second: heartbeats are written to the second, so up to one more)
    assert became_stale >= STALE_AFTER - INTERVAL - 1.5, became_stale

    # In A its own process check knows: dead.
    assert sessions(a, namespace)[victim]["state"] == "dead"

    cleaned = ktpy(b, namespace, "clean")
    left = set(bed.ktpy_objects(namespace))
    assert not created & left, (created, left)
    assert kept <= left, "clean removed a live session's objects"
    after = sessions(b, namespace)
    assert victim not in after
    assert after[keeper]["state"] == "live"
    assert live.proc.poll() is None
    return cleaned
