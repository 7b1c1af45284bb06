"""Build the shadow image once per change of shadow-image/ and keep the OCI
archive and its unpacked rootfs in /var/cache/ktpy-testbed/shadow-test/."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _oci, _pod

REPO = Path(__file__).resolve().parents[3]
IMAGE_DIR = REPO / "shadow-image"
CACHE = Path("/var/cache/ktpy-testbed/shadow-test")
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
MIRROR = "http://deb.debian.org/debian"


def ktpy_version() -> str:
    init = REPO / "ktpy" / "__init__.py"
    if init.exists():
        m = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.MULTILINE)
        if m:
            return m.group(1)
    return "0.1.0"


def source_key() -> str:
    """Hash of everything build.sh reads, so any edit triggers a rebuild."""
    h = hashlib.sha256(ktpy_version().encode())
    for path in sorted(p for p in IMAGE_DIR.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(IMAGE_DIR)).encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _have_image(ref: str) -> bool:
    probe = ["buildah", "inspect", "--type", "image", ref]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ensure_base_image() -> None:
    """There is no registry: the base must already be in buildah's storage.
    The test bed's recipe makes it (one recipe for every image, with the
    host's apt sources); a plain debootstrap is the fallback without it."""
    try:
        from tests.e2e.testbed.images import ensure_debian_base
    except ImportError:
        pass
    else:
        ensure_debian_base()
        return
    if _have_image(BASE_IMAGE):
        return
    rootfs = CACHE / "base-rootfs"
    done = CACHE / "base-rootfs.done"
    if not done.exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        cmd = ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR]
        subprocess.run(cmd, check=True, capture_output=True)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        done.touch()
    ctr = subprocess.run(
        ["buildah", "from", "scratch"], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["buildah", "copy", "--quiet", ctr, str(rootfs), "/"], check=True)
        subprocess.run(
            ["buildah", "config", "--cmd", "bash", "--env",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ctr],
            check=True,
        )  # fmt: skip
        subprocess.run(["buildah", "commit", "--quiet", ctr, BASE_IMAGE], check=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], check=False, capture_output=True)


# Several worktrees (one image source each) share the cache: keep a few
# images, so one tree's rebuild does not pull the rootfs from under another's
# running tests.
KEEP_SLOTS = 3


def _prune(keep: int) -> None:
    slots = sorted(CACHE.glob("img-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in slots[keep:]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class BuiltImage:
    archive: Path
    rootfs: Path
    image: _oci.OciImage
    build_seconds: float | None  # None when it came from the cache

    @property
    def config(self) -> dict[str, Any]:
        return self.image.config


def build_cached() -> BuiltImage:
    key = source_key()
    slot = CACHE / f"img-{key}"
    archive, rootfs, done = slot / "image.oci.tar", slot / "rootfs", slot / "done.json"
    with _locked():
        seconds = None
        if not done.exists():
            shutil.rmtree(slot, ignore_errors=True)  # a failed build's leftovers
            _prune(keep=KEEP_SLOTS - 1)
            slot.mkdir(parents=True)
            ensure_base_image()
            env = {**os.environ, "KTPY_BUILD_PULL": "never"}
            log = slot / "build.log"
            with log.open("wb") as f:
                t0 = time.monotonic()
                rc = subprocess.run(
                    [str(IMAGE_DIR / "build.sh"), "--out", str(archive)],
                    env=env, stdout=f, stderr=subprocess.STDOUT, check=False,
                ).returncode  # fmt: skip
                seconds = time.monotonic() - t0
            if rc != 0:
                raise RuntimeError(f"build.sh failed ({rc}):\n{log.read_text()[-4000:]}")
            _oci.extract_rootfs(archive, rootfs)
            _pod.prepare_rootfs(rootfs)
            done.write_text(json.dumps({"build_seconds": seconds}))
        slot.touch()  # the most recently used slots are the ones kept
        return BuiltImage(archive, rootfs, _oci.read_image(archive), seconds)
