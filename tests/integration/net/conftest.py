"""The `env` fixture: a namespace with a TUN device routed to a test range (see _tun_env)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktpy.net.tun_tcp import DEFAULT_MTU
from tests.integration.support import unavailable

from . import _tun_env as te
from ._tun_env import TunEnv


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[TunEnv]:
    """param: (mtu, offload), default (DEFAULT_MTU, True)."""
    if os.geteuid() != 0:
        unavailable("TUN stack", "needs root (network namespaces, TUN devices)")
    if not Path("/dev/net/tun").exists():
        unavailable("TUN stack", "no /dev/net/tun")
    if shutil.which("ip") is None:
        unavailable("TUN stack", "no ip(8)")
    te.remove_stale()
    mtu, offload = getattr(request, "param", (DEFAULT_MTU, True))
    e = te.create(mtu, offload)
    try:
        yield e
    finally:
        e.close()
