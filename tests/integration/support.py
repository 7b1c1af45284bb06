"""What every integration suite shares: skip outside CI, fail in it.

These suites need root and real devices or tools. Outside CI they skip
without them; with CI=true they fail instead, so a broken machine cannot pass
silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(suite: str, reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{suite} integration tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
