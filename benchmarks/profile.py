"""Where connect's laptop processes spend their time: py-spy profiles of the connect
process and its TUN child while the suite's new-connections and 1,000-connections
scenarios run through the TUN device. Not a test; run as root with the bed up:

    sudo .venv/bin/python -m benchmarks.profile [--out docs/profiles] [--churn 3000]

For each scenario, py-spy samples both processes (``record --subprocesses``,
100 Hz, ``--gil``: only the thread holding the interpreter lock, so what is
counted is each process's Python CPU, the resource its threads queue for) and
this writes the collapsed stacks (``*.txt.gz``) and a summary of them
(``*.md``): per process, the functions with the most samples on top of the stack
(self) and anywhere on it (inclusive), in percent of that process's samples. The
1,000-connections case also gets the processes' RSS and threads, idle and held,
and a ``py-spy dump`` of the held state (threads by what they wait in).

Also a quick A/B figure without the whole suite: the churn rate and the held RSS
are printed and kept in the summaries.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import host_stats
from benchmarks.baselines import KUBECTL, ROOT, Laptop, kubectl
from benchmarks.suite import FULL, Clock, Ktpy, Suite, git
from ktpy.commands.connect import READY_LINE as CONNECT_READY
from tests.e2e.testbed import config

PY_SPY = str(Path(sys.executable).parent / "py-spy")
NAMESPACE = "bench-profile"
TOP = 25


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--rate", "100",
         "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def summarize(raw: Path, title: str, extra: list[str]) -> str:
    """Top self and inclusive frames per process of py-spy's collapsed stacks."""
    by_process: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        process = _process_name([f for f in frames[:2] if f.startswith("process ")])
        calls = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not calls:
            continue
        totals[process] += n
        by_process[process][calls[-1]] += n
        for frame in set(calls):
            inclusive[process][frame] += n
    lines = [f"# {title}", "", *extra, ""]
    for process, total in totals.most_common():
        lines += [f"## {process}: {total} samples (the thread holding the GIL, 100 Hz)", "",
                  "Self (top of stack):", "", "| % | samples | frame |",
                  "|---:|---:|---|"]  # fmt: skip
        for frame, n in by_process[process].most_common(TOP):
            lines.append(f"| {100 * n / total:.1f} | {n} | `{frame}` |")
        lines += ["", "Inclusive (anywhere on the stack):", "",
                  "| % | samples | frame |", "|---:|---:|---|"]  # fmt: skip
        for frame, n in inclusive[process].most_common(TOP):
            lines.append(f"| {100 * n / total:.1f} | {n} | `{frame}` |")
        lines.append("")
    return "\n".join(lines)


def _process_name(processes: list[str]) -> str:
    # py-spy --subprocesses: "process 1 (connect);process 2 (its child);frames..."
    if any("ktpy.net.tun_process" in p for p in processes):
        return "TUN child (ktpy.net.tun_process)"
    return "connect (parent)"


def process_stats(pids: list[int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[str(pid)] = {k: fields[k].strip() for k in ("VmRSS", "RssAnon", "RssFile", "Threads")}
    return out


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "profiles")
    parser.add_argument("--churn", type=int, default=3000, help="new connections profiled")
    parser.add_argument("--hold", type=int, default=FULL.hold_connections)
    parser.add_argument("--laptop", type=int, default=config.BENCH_LAPTOPS[-2])
    parser.add_argument("--only", choices=["churn", "hold"], default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([*KUBECTL, "delete", "namespace", NAMESPACE, "--ignore-not-found",
                    "--wait=true"], check=True, capture_output=True)  # fmt: skip
    kubectl("create", "namespace", NAMESPACE)
    laptop = Laptop(args.laptop, make=True)
    suite = Suite(laptop, NAMESPACE, FULL, Clock(900))
    dirty = "-dirty" if git("status", "--porcelain") else ""
    commit = git("rev-parse", "--short=12", "HEAD") + dirty
    stamp = f"{datetime.now(UTC).isoformat(timespec='seconds')}, commit `{commit}`"
    connect: Ktpy | None = None
    try:
        suite.deploy()
        connect = Ktpy(laptop, "connect.log", "-n", NAMESPACE, "connect")
        connect.wait_line(CONNECT_READY)
        pid = connect.pid()
        target = [suite.cluster_ip, "80"]
        laptop.load("churn", *target, "--connections", "200", "--workers", "4")  # warm-up
        if args.only in (None, "churn"):
            # First without py-spy: the rate, and the CPU both processes spend per connection.
            before = host_stats.tree_stats(pid).cpu_seconds
            plain = laptop.load("churn", *target, "--connections", str(args.churn),
                                "--workers", "4")  # fmt: skip
            cpu_ms = 1000 * (host_stats.tree_stats(pid).cpu_seconds - before) / args.churn
            raw = args.out / "churn.txt"
            spy = record(pid, raw)
            time.sleep(1)
            result = laptop.load("churn", *target, "--connections", str(args.churn),
                                 "--workers", "4")  # fmt: skip
            finish(spy)
            figures = (f"without py-spy {plain['per_s']} new connections/s, p50 "
                       f"{plain['p50_ms']} ms, p99 {plain['p99_ms']} ms, {plain['failed']} "
                       f"failed, {cpu_ms:.2f} ms of CPU (both processes, user + system) per "
                       f"connection; while recorded {result['per_s']}/s")  # fmt: skip
            print("churn:", figures, file=sys.stderr)
            summary = summarize(raw, "connect, TUN mode: new connections", [
                f"{stamp}. `python -m benchmarks.profile`: {args.churn} new connections "
                f"by 4 workers through the TUN device (one request each), py-spy recording "
                f"both processes meanwhile (which slows them: the rate here is not the "
                f"suite's).", "", f"Load: {figures}."])  # fmt: skip
            (args.out / "churn.md").write_text(summary + "\n")
            _gzip(raw)
        if args.only in (None, "hold"):
            pids = [pid, *children(pid)]
            idle = process_stats(pids)
            idle_tree = host_stats.tree_stats(pid)
            raw = args.out / "hold.txt"
            spy = record(pid, raw)
            proc = laptop.popen(sys.executable, "-m", "benchmarks.load", "hold", *target,
                                "--conns", str(args.hold), stdin=subprocess.PIPE)  # fmt: skip
            assert proc.stderr is not None
            assert proc.stdin is not None
            line = proc.stderr.readline()
            finish(spy)
            if "held" not in line:
                raise RuntimeError(f"hold: {line}")
            held = process_stats(pids)
            held_tree = host_stats.tree_stats(pid)
            dumps = [subprocess.run([PY_SPY, "dump", "--pid", str(p)], capture_output=True,
                                    text=True).stdout for p in pids]  # fmt: skip
            proc.stdin.write("go\n")
            proc.stdin.close()
            result = json.loads(proc.stdout.read().splitlines()[-1])  # type: ignore[union-attr]
            proc.wait(60)
            figures = (f"{result['answered']} of {result['connections']} answered, "
                       f"{result['errors']} errors, {result['open_seconds']} s to open all; "
                       f"RSS of both processes {idle_tree.rss_bytes / 1e6:.1f} MB idle, "
                       f"{held_tree.rss_bytes / 1e6:.1f} MB held; threads "
                       f"{idle_tree.threads} idle, {held_tree.threads} held")  # fmt: skip
            print("hold:", figures, file=sys.stderr)
            waits = _waits(dumps)
            summary = summarize(raw, "connect, TUN mode: 1,000 connections opened and held", [
                f"{stamp}. `python -m benchmarks.profile`: {args.hold} connections through "
                f"the TUN device, each opened and answered once; py-spy recorded both "
                f"processes until all were held.", "", f"Load: {figures}.", "",
                "Per process (/proc status), idle then held: "
                f"`{json.dumps(idle)}` / `{json.dumps(held)}`.", "",
                "Threads while held, by the frame they wait in (py-spy dump):", "",
                "| threads | innermost frame |", "|---:|---|",
                *(f"| {n} | `{frame}` |" for frame, n in waits.most_common(12))])  # fmt: skip
            (args.out / "hold.md").write_text(summary + "\n")
            _gzip(raw)
            print(json.dumps({"hold": result, "idle": asdict(idle_tree),
                              "held": asdict(held_tree)}), file=sys.stderr)  # fmt: skip
    finally:
        if connect is not None:
            connect.stop()
        laptop.close(keep_logs=False)
        subprocess.run([*KUBECTL, "delete", "namespace", NAMESPACE, "--wait=false",
                        "--ignore-not-found"], capture_output=True, check=False)  # fmt: skip


def _waits(dumps: list[str]) -> collections.Counter[str]:
    """py-spy dump's threads by their innermost frame."""
    waits: collections.Counter[str] = collections.Counter()
    for dump in dumps:
        for block in dump.split("\nThread ")[1:]:
            frames = [ln.strip() for ln in block.splitlines()[1:] if ln.startswith("    ")]
            if frames:
                waits[frames[0].split(" (")[0] + " (" + frames[0].split(" (")[-1]] += 1
    return waits


def _gzip(raw: Path) -> None:
    with raw.open("rb") as src, gzip.open(raw.with_suffix(".txt.gz"), "wb") as dst:
        dst.write(src.read())
    raw.unlink()


if __name__ == "__main__":
    main()
