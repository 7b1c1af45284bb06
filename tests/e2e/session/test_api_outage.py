"""The API server stopped mid-command (issue 13): the command ends with the
documented exit code and one line, never InternalError (70, "a bug in ktpy").

A session's heartbeat is what proves it alive to every other machine; once the
API server has not taken one for stale-after, any ``ktpy clean`` may sweep the
session's objects as dead, so the session stops and says why (exit 10: the
API server refuses connections while it is stopped). The bed's API server is
stopped for the time that takes (about 10 s) and started again: run this test
under the exclusive bed lock, since every other session on the bed feels it.
"""

from __future__ import annotations

import signal
import time

from tests.e2e.conftest import Bed, Laptop, run_ktpy
from tests.e2e.testbed import bed as testbed

# Short, so the outage is short: the session gives up after 6 s without a heartbeat.
FAST = {"KTPY_HEARTBEAT_INTERVAL": "2s", "KTPY_STALE_AFTER": "6s"}


def test_the_api_server_stopped_mid_session_ends_it_with_the_documented_code(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    session = run_ktpy(
        laptop, "-n", namespace, "connect", "--mode", "socks", "--socks-port", "2311", env=FAST
    )
    try:
        session.wait_ready()
        stopping = time.monotonic()  # SIGTERM: the API server's graceful stop takes a while
        with testbed.stopped("apiserver"):
            code = session.proc.wait(60)
            took = time.monotonic() - stopping
    finally:
        session.stop(signal.SIGKILL)
    errors = session.all_errors()
    print(f"\nAPI server stopping: the session ended {took:.1f}s later with exit {code}")
    assert code == 10, errors
    said = [line for line in errors if line.startswith("Error:")]
    assert len(said) == 1, errors
    assert said[0].startswith("Error: no heartbeat for 6s (stale-after)"), said
    assert "cannot reach the API server" in said[0]
    assert not any("a bug in ktpy" in line or "Traceback" in line for line in errors), errors
    assert any(line.startswith("Hint:") for line in errors), errors
    # 6 s without a heartbeat, noticed at the next one (every 2 s), then the teardown's
    # attempts, each refused at once.
    assert took < 30
