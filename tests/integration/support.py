"""What every integration suite shares: skip outside CI, fail in it.

These suites need root and real devices or tools. Outside CI they skip
without them; with CI=true they fail instead, so a broken machine cannot pass
silently.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000

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


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Call fn in a thread that joined network namespace ns (/run/netns/ns): sockets
    and devices it makes stay there and can be used from any thread afterwards,
    with no extra process to reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            error.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
