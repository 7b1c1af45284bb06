"""Fixtures for the shadow image tests: the image (built once per change of
shadow-image/) and running shadow pods in network namespaces.

Needs root, buildah, debootstrap (if the base image is missing), ip, unshare.
Outside CI these tests skip without them; in CI (CI=true) they fail instead,
so a broken machine cannot pass silently."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.support import unavailable

from . import _image, _netns, _pod

TOOLS = ("buildah", "ip", "unshare", "mount")


def _unavailable(reason: str) -> None:
    unavailable("shadow image", reason)


@pytest.fixture(scope="session")
def built() -> _image.BuiltImage:
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces, chroot, buildah)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        _unavailable(f"missing tools: {', '.join(missing)}")
    _netns.remove_stale()
    return _image.build_cached()


StartPod = Callable[..., _pod.ShadowPod]


@pytest.fixture
def start_pod(built: _image.BuiltImage) -> Iterator[StartPod]:
    """Start pods for one test; all are torn down after it, pass or fail."""
    pods: list[_pod.ShadowPod] = []

    def start(**kw: Any) -> _pod.ShadowPod:
        pod = _pod.start(built.rootfs, built.config, **kw)
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture(scope="module")
def pod(built: _image.BuiltImage) -> Iterator[_pod.ShadowPod]:
    """One pod with exactly the contract's Secret, shared by a module's
    read-only tests."""
    p = _pod.start(built.rootfs, built.config)
    try:
        yield p
    finally:
        p.stop()
