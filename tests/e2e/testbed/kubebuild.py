"""Builds the multi-call Kubernetes binary from the Go module proxy, cached by version.

The cache key hashes everything that decides the output (the Go module files,
the dispatcher source, the Kubernetes and Go versions), so a warm `up` never
compiles and a change to any input builds a new binary beside the old one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from . import config

KUBE_MODULE = config.HERE / "build" / "kube"
BIN_CACHE = config.CACHE_DIR / "bin"
NAMES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "etcd",
)


# Measured on 2 vCPU (docs/testing.md): 6 min 34 s with the module downloads (2026-12-07),
# 8 min 38 s plus 51 s of downloads (2026-11-27).
COLD_BUILD = "cold: 7-10 min on 2 cores, once; then cached"


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], check=True, capture_output=True, text=True
    ).stdout.strip()


def cache_key(module: Path = KUBE_MODULE) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((module / name).read_bytes())
    digest.update(config.KUBE_VERSION.encode())
    digest.update(_go_version().encode())
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    return BIN_CACHE / f"kube-{config.KUBE_VERSION}-{cache_key()}"


def ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build(verbose: bool = True) -> Path:
    out = binary_path()
    if out.exists():
        return out
    BIN_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    cmd = [
        "go",
        "build",
        "-trimpath",
        "-o",
        str(tmp),
        "-ldflags",
        ldflags(config.KUBE_VERSION),
        ".",
    ]
    started = time.monotonic()
    if verbose:
        print(f"building {out.name} ({COLD_BUILD})", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=KUBE_MODULE, check=True, env={**os.environ, "CGO_ENABLED": "0"})
    tmp.rename(out)
    if verbose:
        spent = time.monotonic() - started
        print(f"built {out.name} in {spent // 60:.0f} min {spent % 60:.0f} s", file=sys.stderr)
    return out


def link_components(binary: Path) -> None:
    """BIN_DIR/<component> -> the multi-call binary (it dispatches on argv[0])."""
    config.BIN_DIR.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        link = config.BIN_DIR / name
        if link.is_symlink() and str(link.readlink()) == str(binary):
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(binary)
