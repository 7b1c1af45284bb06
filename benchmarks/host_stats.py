"""What the suite reads off the machine, which is both the bed's node and the host
of its laptops: CPU, memory and threads of process trees (ktpy's laptop
processes, each baseline's), a pod's memory from its cgroup, and an image's
size in containerd."""

from __future__ import annotations

import gzip
import json
import os
import re
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


# --- per process, for the profiles (benchmarks/profile.py) ---------------------------------


def cpu_by_process() -> dict[int, float]:
    """User + system CPU seconds of every live process."""
    out: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the machine's cores spent on anything but idle and I/O wait."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK  # guest time is already in user


def _cgroup_dirs(pod_uid: str) -> list[Path]:
    matches = list(Path("/sys/fs/cgroup/memory/kubepods").glob(f"**/pod{pod_uid}"))
    matches = matches or list(Path("/sys/fs/cgroup").glob(f"**/pod{pod_uid}"))
    if not matches:
        raise RuntimeError(f"no cgroup for pod {pod_uid}")
    return [matches[0], *(d for d in matches[0].rglob("*") if d.is_dir())]


def pod_processes(pod_uid: str) -> list[int]:
    """Every process of the pod (its containers' cgroups), pause included."""
    pids: list[int] = []
    for cg in _cgroup_dirs(pod_uid):
        procs = cg / "cgroup.procs"
        if procs.exists():
            pids += [int(p) for p in procs.read_text().split()]
    return sorted(set(pids))


def pod_memory_stat(pod_uid: str) -> dict[str, int]:
    """The pod cgroup's whole memory.stat (v1: the total_* fields are the
    hierarchy's), with the kernel-memory counters where the kernel keeps them."""
    cg = _cgroup_dirs(pod_uid)[0]
    out = {
        k: int(v) for k, v in (ln.split() for ln in (cg / "memory.stat").read_text().splitlines())
    }
    for name in ("memory.usage_in_bytes", "memory.kmem.usage_in_bytes",
                 "memory.kmem.tcp.usage_in_bytes", "memory.current"):  # fmt: skip
        if (cg / name).exists():
            out[name] = int((cg / name).read_text())
    return out


_MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")  # a mapping's first line in smaps


def process_memory(pid: int) -> dict[str, int | str]:
    """A process's name, resident memory (/proc status, in bytes), its proportional
    and private shares (smaps_rollup) and its heap's resident part (smaps)."""
    base = Path("/proc") / str(pid)
    out: dict[str, int | str] = {"comm": (base / "comm").read_text().strip()}
    for line in (base / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPTE"):
            out[key] = int(value.split()[0]) * 1024
    for line in (base / "smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Pss", "Private_Dirty", "Anonymous"):
            out[key] = int(value.split()[0]) * 1024
    in_heap = False
    for line in (base / "smaps").read_text().splitlines():
        if _MAPPING.match(line):
            in_heap = line.rstrip().endswith("[heap]")
        elif in_heap and line.startswith("Rss:"):
            out["heap_rss"] = int(line.split()[1]) * 1024
    return out
