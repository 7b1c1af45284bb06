"""What the suite reads off the machine, which is both the bed's node and the host
of its laptops: CPU, memory and threads of process trees (ktpy's laptop
processes, each baseline's), a pod's memory from its cgroup, and an image's
size in containerd."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.testbed import config

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TreeStats:
    pids: int
    cpu_seconds: float
    rss_bytes: int
    threads: int


def descendants(*roots: int) -> list[int]:
    """roots and every live process below them."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = [pid for pid in roots if pid in parents]
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.append(pid)
                changed = True
    return found


def tree_stats(*roots: int) -> TreeStats:
    """User + system CPU, resident memory and threads of roots and their descendants."""
    cpu, rss, threads, count = 0.0, 0, 0, 0
    for pid in descendants(*roots):
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            status = (Path("/proc") / str(pid) / "status").read_text()
        except OSError:
            continue
        count += 1
        cpu += (int(fields[11]) + int(fields[12])) / TICK
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return TreeStats(count, cpu, rss, threads)


def pod_memory(pod_uid: str) -> dict[str, int]:
    """The pod's memory cgroup (v1 on this machine: usage_in_bytes is v2's
    memory.current): usage, peak, and the working set as the kubelet counts it
    (usage less inactive file pages)."""
    matches = list(Path("/sys/fs/cgroup/memory/kubepods").glob(f"**/pod{pod_uid}"))
    if matches:
        cg = matches[0]
        stat = {
            k: int(v)
            for k, v in (line.split() for line in (cg / "memory.stat").read_text().splitlines())
        }
        usage = int((cg / "memory.usage_in_bytes").read_text())
        return {
            "usage_bytes": usage,
            "peak_bytes": int((cg / "memory.max_usage_in_bytes").read_text()),
            "working_set_bytes": usage - stat.get("total_inactive_file", 0),
            "rss_bytes": stat.get("total_rss", 0),
        }
    v2 = list(Path("/sys/fs/cgroup").glob(f"**/pod{pod_uid}"))
    if not v2:
        raise RuntimeError(f"no cgroup for pod {pod_uid}")
    cg = v2[0]
    stat = dict(line.split() for line in (cg / "memory.stat").read_text().splitlines())
    usage = int((cg / "memory.current").read_text())
    peak = cg / "memory.peak"
    return {
        "usage_bytes": usage,
        "peak_bytes": int(peak.read_text()) if peak.exists() else usage,
        "working_set_bytes": usage - int(stat.get("inactive_file", 0)),
        "rss_bytes": int(stat.get("anon", 0)),
    }


def _ctr(*args: str) -> bytes:
    return subprocess.run(
        ["ctr", "-a", config.CONTAINERD_ADDRESS, "-n", "k8s.io", *args],
        check=True,
        capture_output=True,
    ).stdout


def image_size(ref: str) -> dict[str, int]:
    """An image's size as pulled (its compressed layers and config) and uncompressed
    (its layers' tar streams), read from containerd's content store."""
    line = next(
        (row for row in _ctr("images", "ls").decode().splitlines() if row.split()[:1] == [ref]),
        None,
    )
    if line is None:
        raise RuntimeError(f"image {ref} is not in containerd")
    manifest = json.loads(_ctr("content", "get", line.split()[2]))
    if "manifests" in manifest:  # an index: the amd64 manifest
        chosen = next(m for m in manifest["manifests"] if m["platform"]["architecture"] == "amd64")
        manifest = json.loads(_ctr("content", "get", chosen["digest"]))
    pulled = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    uncompressed = 0
    for layer in manifest["layers"]:
        blob = _ctr("content", "get", layer["digest"])
        uncompressed += len(gzip.decompress(blob)) if "gzip" in layer["mediaType"] else len(blob)
    return {
        "pulled_bytes": pulled,
        "uncompressed_bytes": uncompressed,
        "layers": len(manifest["layers"]),
    }
