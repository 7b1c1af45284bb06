"""Where connect's laptop processes spend their time: py-spy profiles of the session
process, its TUN child and its root helper while the suite's new-connections,
1,000-connections, bulk and uncached-DNS scenarios run through the TUN device. Not a
test; run as root with the bed up:

    sudo .venv/bin/python -m benchmarks.profile [--out docs/profiles] [--only bulk]

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

Bulk (``bulk.md``): downloads of ``--bulk`` MiB through the TUN device and,
interleaved round by round, through the two hops the targets hold connect
against: ktpy's port-forward without SSH and ``ssh -D`` over it. For each, the
rate and the CPU seconds per GiB of every process on the machine that worked
(the node is this machine: API server, kubelet, sshd in the shadow pod, the
laptop's processes), from /proc before and after. Then two py-spy recordings
of connect's processes during the same download: ``--gil`` (each
interpreter's Python CPU) and every thread on a CPU (``--threads``, no
``--gil``: which threads work, and in what).

DNS (``dns.md``): an uncached cluster name's hops timed on their own (cluster DNS
from a pod, the shadow pod's dnsmasq from inside the pod, a request through the
tunnel with and without the TUN child, ktpy's server with the name cached) against
the whole lookup, interleaved round by round; the CPU per lookup of each of
connect's processes; and a ``--gil`` recording during uncached lookups.

The shadow pod (``shadow-pod.md``): its cgroup's memory.stat and each of its
processes' memory (/proc status, smaps_rollup, the heap's resident part),
read on the node: at the start, after the bulk downloads, with the
connections held and after they closed.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import host_stats
from benchmarks.baselines import KUBECTL, ROOT, Helpers, Laptop, kubectl, node_load, pod_netns_pid
from benchmarks.connect import stop
from benchmarks.suite import FULL, GIB, PORTS, SOCKS_PORT, Clock, Ktpy, Suite, git
from ktpy.commands.connect import READY_LINE as CONNECT_READY
from tests.e2e.testbed import config

PY_SPY = str(Path(sys.executable).parent / "py-spy")
SCENARIOS = ("bulk", "dns", "churn", "hold")
NAMESPACE = "bench-profile"
TOP = 25
MIB = 1 << 20
# Python processes by the module they run (their command line), the rest by name.
ROLES = (
    ("ktpy.net.tun_process", "TUN child (ktpy.net.tun_process)"),
    ("ktpy.host.helper", "root helper (ktpy.host.helper)"),
    ("benchmarks.raw_forward", "ktpy's port-forward without SSH (benchmarks.raw_forward)"),
    ("benchmarks.load", "load tool"),
    ("-m ktpy", "connect (session process)"),
)
# The component a sample's innermost Python frame belongs to (its file), first match.
COMPONENTS = (
    ("cryptography/", "cryptography (cipher)"),
    ("paramiko/packet.py", "paramiko's packetizer (framing, cipher calls, MAC)"),
    ("paramiko/", "paramiko's transport and channels"),
    ("ktpy/tunnel/portforward.py", "port-forward WebSocket client"),
    ("ssl.py", "TLS socket to the API server"),
    ("ktpy/net/relay.py", "relay (SSH channel <-> unix socket <-> stack)"),
    ("ktpy/net/socks_server.py", "relay (SSH channel <-> unix socket <-> stack)"),
    ("ktpy/net/tun_tcp.py", "TUN stack (device loop, flows)"),
    ("ktpy/net/tcp.py", "TUN stack (TCP state machine)"),
    ("ktpy/net/ip.py", "TUN stack (IP/TCP headers, checksums)"),
    ("ktpy/net/tun_process.py", "TUN child (flows to the parent)"),
    ("threading.py", "threading (locks, conditions, thread starts)"),
    ("socket.py", "socket module"),
    ("structlog/", "logging"),
    ("logging/", "logging"),
)


def record(pid: int, out: Path, gil: bool = True) -> subprocess.Popen[bytes]:
    """py-spy on pid and its children: with gil, only the thread holding each
    interpreter's lock; without, every thread at every tick (wall clock), each a
    frame of its own. (py-spy's own idle test does not work here: without --idle it
    sampled every thread at every tick all the same.)"""
    mode = ["--gil"] if gil else ["--threads", "--idle"]
    return subprocess.Popen(
        [PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--rate", "100",
         "--format", "raw", "--output", str(out), "--nonblocking", *mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _samples(raw: Path) -> list[tuple[str, str, list[str], int]]:
    """py-spy's collapsed stacks: (process, thread or "", frames, samples)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        process = _process_name([f for f in frames if f.startswith("process ")])
        thread = next((f for f in frames if f.startswith("thread (")), "")
        calls = [f for f in frames if not f.startswith(("process ", "thread ("))]
        if calls:
            out.append((process, thread, calls, int(count)))
    return out


def summarize(raw: Path, title: str, extra: list[str], what: str = "the thread holding "
              "the GIL, 100 Hz") -> str:  # fmt: skip
    """Top self and inclusive frames per process of py-spy's collapsed stacks."""
    by_process: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for process, _thread, calls, n in _samples(raw):
        totals[process] += n
        by_process[process][calls[-1]] += n
        for frame in set(calls):
            inclusive[process][frame] += n
    lines = [f"# {title}", "", *extra, ""]
    for process, total in totals.most_common():
        lines += [f"## {process}: {total} samples ({what})", "",
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


def thread_role(thread: str, calls: list[str]) -> str:
    """A thread by what it runs: its name without the counter, and the first frame
    below threading's bootstrap (the main thread: its module)."""
    name = re.sub(r"^thread \(\d+\): ", "", thread)
    name = re.sub(r"^Thread-\d+(?: \((.*)\))?$", lambda m: m.group(1) or "Thread", name)
    below = [c for c in calls if _file(c) != "threading.py"]
    first = re.sub(r":\d+\)$", ")", below[0]) if below else "?"
    return f"{name}: {first}"


def _file(frame: str) -> str:
    """The source file of a py-spy frame, "Class.method (path/file.py:12)"."""
    found = re.search(r"\(([^()]*):\d+\)$", frame)
    return found.group(1) if found else ""


def component(frame: str) -> str:
    """What part of the data path a frame belongs to, by its file."""
    file = _file(frame)
    return next((name for part, name in COMPONENTS if file.startswith(part)), "other")


def threads_summary(raw: Path, cpu: dict[tuple[str, int], tuple[float, float]], gib: float,
                    seconds: float) -> list[str]:  # fmt: skip
    """Per process, its threads by the CPU each spent (from /proc, cpu: seconds by
    process role and the thread's id in the laptop's namespace: user and system
    seconds), in CPU seconds per
    GiB and share of a core, with the frames its samples (wall clock, every
    thread at every tick) sat in most and their components."""
    names: dict[tuple[str, int], str] = {}
    frames: dict[tuple[str, int], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for process, thread, calls, n in _samples(raw):
        found = re.match(r"thread \((\d+)\)", thread)
        if not found:
            continue
        key = (process, int(found.group(1)))
        names.setdefault(key, thread_role(thread, calls))
        frames[key][calls[-1]] += n
    lines: list[str] = []
    for process in dict.fromkeys(p for p, _ in sorted(cpu, key=lambda k: -sum(cpu[k]))):
        mine = sorted(((sum(s), s[1], k) for k, s in cpu.items() if k[0] == process),
                      reverse=True)  # fmt: skip
        total = sum(s for s, _, _ in mine)
        system = sum(s for _, s, _ in mine)
        core = 100 * total / seconds
        lines += [f"### {process}: {total / gib:.2f} CPU s per GiB ({system / gib:.2f} of it "
                  f"in the kernel), {core:.0f}% of a core", "",
                  "| CPU s/GiB | of it system | % of a core | thread (name: its target) | "
                  "where its samples sat (wall clock), most first |",
                  "|---:|---:|---:|---|---|"]  # fmt: skip
        for spent, sys_spent, key in mine:
            if spent / gib < 0.01:
                continue
            where = frames.get(key, collections.Counter())
            count = sum(where.values()) or 1
            top = "; ".join(f"`{f}` {100 * n / count:.0f}% ({component(f)})"
                            for f, n in where.most_common(4))  # fmt: skip
            name = names.get(key, f"thread {key[1]} (not sampled)")
            lines.append(f"| {spent / gib:.2f} | {sys_spent / gib:.2f} | "
                         f"{100 * spent / seconds:.0f} | `{name}` | "
                         f"{top} |")  # fmt: skip
        lines.append("")
    return lines


def thread_cpu(pids: list[int]) -> dict[tuple[str, int], tuple[float, float]]:
    """User and system CPU seconds of every thread of pids, by process role and the
    thread's id as
    its process sees it (the laptop's PID namespace: py-spy's ids)."""
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for pid in pids:
        role = role_of(pid)
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                status = (task / "status").read_text()
            except OSError:
                continue
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:"))
            key = (role, int(nspid.split()[-1]))
            out[key] = (int(fields[11]) / host_stats.TICK, int(fields[12]) / host_stats.TICK)
    return out


class ThreadWatch:
    """Every thread's CPU over a stretch of time, threads that start and end within
    it included (read every 0.2 s; the last 0.2 s of one that ended is missed)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.first = thread_cpu(pids)
        self.last = dict(self.first)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            self.last.update(thread_cpu(self.pids))

    def stop(self) -> dict[tuple[str, int], tuple[float, float]]:
        self.done.set()
        self.thread.join()
        self.last.update(thread_cpu(self.pids))
        first = self.first
        return {k: (u - first.get(k, (0.0, 0.0))[0], s - first.get(k, (0.0, 0.0))[1])
                for k, (u, s) in self.last.items()}  # fmt: skip


def _process_name(processes: list[str]) -> str:
    # py-spy --subprocesses: "process 1:\"cmdline\";process 2:\"its child's\";frames..."
    return _role(processes[-1] if processes else "")


def _role(cmdline: str) -> str:
    return next((name for part, name in ROLES if part in cmdline), "connect (session process)")


def role_of(pid: int) -> str:
    """A process by its command line (Python modules) or its name."""
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        comm = (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
    text = cmdline.decode(errors="replace")
    if comm.startswith("python"):
        found = next((name for part, name in ROLES if part in text), None)
        return found or f"python: {text[:60]}"
    return comm


def process_stats(pids: list[int]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[f"{pid} {role_of(pid)}"] = {
            k: fields[k].strip() for k in ("VmRSS", "RssAnon", "RssFile", "Threads")
        }
    return out


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


# --- bulk: where the CPU of a download goes, machine-wide ----------------------------------


def cpu_spent(work: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float], float]:
    """work's result, the CPU seconds each process role spent meanwhile (processes of
    one role added up; those that ended meanwhile are not seen), and the machine's
    busy seconds."""
    before, busy = host_stats.cpu_by_process(), host_stats.machine_busy_seconds()
    result = work()
    after, busy_after = host_stats.cpu_by_process(), host_stats.machine_busy_seconds()
    by_role: dict[str, float] = collections.defaultdict(float)
    for pid, cpu in after.items():
        spent = cpu - before.get(pid, 0.0)
        if spent > 0:
            by_role[role_of(pid)] += spent
    return result, dict(by_role), busy_after - busy


def bulk(args: argparse.Namespace, laptop: Laptop, suite: Suite, connect: Ktpy,
         stamp: str, shadow: ShadowWatch) -> None:  # fmt: skip
    """Downloads through connect (TUN) and the two hops the targets compare it
    with, interleaved; CPU per GiB of every process; py-spy of connect's during one."""
    helpers = Helpers(laptop, NAMESPACE)
    pod_forward, ssh_forward = PORTS["ktpy_port_forward"], PORTS["ssh_ktpy_port_forward"]
    try:
        helpers.start("ktpy_port_forward", pod_forward, sys.executable, "-m",
                      "benchmarks.raw_forward", NAMESPACE, suite.pod, "8080", "--listen",
                      str(pod_forward))  # fmt: skip
        key, host_key = helpers.authorize(shadow.pod)
        helpers.start("ssh_ktpy_port_forward", ssh_forward, sys.executable, "-m",
                      "benchmarks.raw_forward", NAMESPACE, shadow.pod, "2222", "--listen",
                      str(ssh_forward))  # fmt: skip
        helpers.ssh_socks("ssh_d_ktpy_pf", key, host_key, ssh_forward, PORTS["ssh_d_ktpy_pf"])
        paths = {
            "ktpy's port-forward, no SSH": ["127.0.0.1", str(pod_forward)],
            "`ssh -D` over ktpy's port-forward": [suite.cluster_ip, "80", "--socks",
                                                  str(PORTS["ssh_d_ktpy_pf"])],
            "ktpy connect, TUN": [suite.cluster_ip, "80"],
        }  # fmt: skip
        size = str(args.bulk * MIB)
        for target in paths.values():  # warm-up: every hop open once
            laptop.load("bulk", *target, "--bytes", str(16 * MIB))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        for _ in range(args.bulk_rounds):
            for name, target in paths.items():
                load = functools.partial(laptop.load, "bulk", *target, "--bytes", size,
                                         "--direction", "down")  # fmt: skip
                result, spent, busy = cpu_spent(load)
                gib = result["bytes"] / GIB
                per_gib = {role: cpu / gib for role, cpu in spent.items()}
                runs[name].append({"gbit_s": result["gbit_s"], "seconds": result["seconds"],
                                   "busy_s_per_gib": busy / gib,
                                   "cpu_s_per_gib": per_gib})  # fmt: skip
        shadow.snap("after the bulk downloads (every SSH session still open)")
        recorded: list[str] = []
        pids = [connect.pid(), *children(connect.pid())]
        for gil, name in ((True, "bulk-gil"), (False, "bulk-threads")):
            raw = args.out / f"{name}.txt"
            spy = record(connect.pid(), raw, gil=gil)
            time.sleep(1)
            watch = ThreadWatch(pids)
            result = laptop.load("bulk", *paths["ktpy connect, TUN"], "--bytes",
                                 str(2 * args.bulk * MIB), "--direction", "down")  # fmt: skip
            threads = watch.stop()
            stop(spy)  # py-spy writes its profile on SIGINT
            recorded.append(f"{result['gbit_s']} Gbit/s while recorded "
                            f"({'--gil' if gil else 'every thread'})")  # fmt: skip
            if gil:
                text = summarize(raw, "connect, TUN mode: bulk download", [])
                gil_text = text.split("\n", 3)[-1]
            else:
                threads_text = threads_summary(raw, threads, result["bytes"] / GIB,
                                               result["seconds"])  # fmt: skip
            _gzip(raw)
        lines = [f"# connect, TUN mode: one bulk download ({args.bulk} MiB)", "",
                 f"{stamp}. `python -m benchmarks.profile` (bulk): {args.bulk_rounds} "
                 f"rounds, each path in turn, of one {args.bulk} MiB download (one stream) "
                 "from the echo pod; CPU seconds per GiB of every process that worked "
                 "meanwhile (/proc before and after; the node is this machine: the "
                 "shadow pod's sshd, the API server and the kubelet are here too); the "
                 "load tool itself starts and ends inside the download and is not seen, "
                 "except in the machine's busy seconds.", "",
                 *_bulk_table(runs), "",
                 f"Then py-spy on connect's processes during a {2 * args.bulk} MiB "
                 f"download each: {'; '.join(recorded)}.", "",
                 "## Every thread: its CPU (/proc) and where it sat (py-spy `--threads "
                 "--idle`)", "",
                 "CPU of each thread during the recorded download (read every 0.2 s "
                 "from /proc; recording slows the path, so these are per GiB of that "
                 "download), and the innermost frames of its samples (wall clock: "
                 "a thread waiting sits in the call it waits in).", "", *threads_text,
                 "## The thread holding the GIL (`--gil`)",
                 "", gil_text]  # fmt: skip
        (args.out / "bulk.md").write_text("\n".join(lines) + "\n")
        print("bulk:", json.dumps({n: [r["gbit_s"] for r in rs] for n, rs in runs.items()}),
              file=sys.stderr)  # fmt: skip
    finally:
        helpers.stop_all()


def _bulk_table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    def median(rs: list[dict[str, Any]], f: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(f(r) for r in rs)

    lines = ["| path | Gbit/s (median; each round) | machine busy CPU s/GiB | "
             "CPU s/GiB by process (median), most first |", "|---|---:|---:|---|"]  # fmt: skip
    for name, rs in runs.items():
        roles: set[str] = set().union(*(r["cpu_s_per_gib"] for r in rs))
        per = {role: statistics.median(r["cpu_s_per_gib"].get(role, 0.0) for r in rs)
               for role in roles}  # fmt: skip
        top = sorted(((v, k) for k, v in per.items() if v >= 0.05), reverse=True)
        rates = ", ".join(f"{r['gbit_s']:.2f}" for r in rs)
        lines.append(f"| {name} | {median(rs, lambda r: r['gbit_s']):.2f} ({rates}) | "
                     f"{median(rs, lambda r: r['busy_s_per_gib']):.2f} | "
                     + "; ".join(f"{k} {v:.2f}" for v, k in top) + " |")  # fmt: skip
    return lines


# --- the shadow pod's memory ------------------------------------------------------------------


class ShadowWatch:
    """The shadow pod's memory cgroup and each of its processes, read on the node
    at named moments."""

    def __init__(self, connect: Ktpy) -> None:
        self.pod = connect.line(r"Shadow pod (\S+) in namespace").group(1)
        self.uid = kubectl("-n", NAMESPACE, "get", "pod", self.pod, "-o",
                           "jsonpath={.metadata.uid}")  # fmt: skip
        self.snaps: list[tuple[str, dict[str, int], dict[int, dict[str, int | str]]]] = []

    def snap(self, moment: str) -> None:
        procs: dict[int, dict[str, int | str]] = {}
        for pid in host_stats.pod_processes(self.uid):
            try:
                procs[pid] = host_stats.process_memory(pid)
                procs[pid]["cmdline"] = (Path("/proc") / str(pid) / "cmdline").read_bytes(
                ).replace(b"\0", b" ").decode(errors="replace").strip()[:80]  # fmt: skip
            except OSError:
                continue
        self.snaps.append((moment, host_stats.pod_memory_stat(self.uid), procs))

    def write(self, path: Path, stamp: str, held: int) -> None:
        lines = [f"# The shadow pod's memory, read on the node ({held} connections held)", "",
                 f"{stamp}. `python -m benchmarks.profile`: connect's shadow pod `{self.pod}` "
                 "(the bed's node is this machine). Working set as the kubelet counts it: "
                 "usage less inactive file pages. MiB.", "",
                 "| moment | usage | working set | rss (anon) | cache | kmem | kmem tcp |",
                 "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for moment, stat, _ in self.snaps:
            usage = stat.get("memory.usage_in_bytes", stat.get("memory.current", 0))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            lines.append(
                f"| {moment} | {mib(usage)} | {mib(usage - inactive)} | "
                f"{mib(stat.get('total_rss', stat.get('anon', 0)))} | "
                f"{mib(stat.get('total_cache', stat.get('file', 0)))} | "
                f"{mib(stat.get('memory.kmem.usage_in_bytes', 0))} | "
                f"{mib(stat.get('memory.kmem.tcp.usage_in_bytes', 0))} |"
            )
        lines += ["", "Per process (VmRSS; RssAnon; Pss; the heap's resident part), MiB:", "",
                  "| moment | pid | process | VmRSS | RssAnon | Pss | heap | page tables |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for moment, _, procs in self.snaps:
            for pid, m in procs.items():
                lines.append(f"| {moment} | {pid} | `{m['cmdline'] or m['comm']}` | "
                             f"{mib(m.get('VmRSS', 0))} | {mib(m.get('RssAnon', 0))} | "
                             f"{mib(m.get('Pss', 0))} | {mib(m.get('heap_rss', 0))} | "
                             f"{mib(m.get('VmPTE', 0))} |")  # fmt: skip
        lines += ["", "The cgroup's memory.stat at each moment: `"
                  + json.dumps({moment: stat for moment, stat, _ in self.snaps}) + "`"]  # fmt: skip
        path.write_text("\n".join(lines) + "\n")


def mib(size: int | str) -> str:
    return f"{int(size) / MIB:.2f}"


# --- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "profiles")
    parser.add_argument("--churn", type=int, default=3000, help="new connections profiled")
    parser.add_argument("--hold", type=int, default=FULL.hold_connections)
    parser.add_argument("--bulk", type=int, default=256, help="MiB per bulk download")
    parser.add_argument("--bulk-rounds", type=int, default=3)
    parser.add_argument("--dns", type=int, default=400, help="lookups per DNS series and round")
    parser.add_argument("--dns-rounds", type=int, default=3)
    parser.add_argument("--laptop", type=int, default=config.BENCH_LAPTOPS[-2])
    parser.add_argument("--only", choices=SCENARIOS, action="append",
                        help="these scenarios (repeat for more); all by default")  # fmt: skip
    args = parser.parse_args(argv)
    only = set(args.only or SCENARIOS)
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
        # The SOCKS port: the DNS scenario's tunnel round trip without the TUN child.
        connect = Ktpy(laptop, "connect.log", "-n", NAMESPACE, "connect",
                       "--socks-port", str(SOCKS_PORT))  # fmt: skip
        connect.wait_line(CONNECT_READY)
        pid = connect.pid()
        shadow = ShadowWatch(connect)
        shadow.snap("connect up, idle")
        target = [suite.cluster_ip, "80"]
        laptop.load("churn", *target, "--connections", "200", "--workers", "4")  # warm-up
        if "bulk" in only:
            bulk(args, laptop, suite, connect, stamp, shadow)
            shadow.snap("after the bulk downloads, the other SSH sessions closed")
        if "dns" in only:
            dns(args, laptop, suite, connect, shadow, stamp)
        if "churn" in only:
            churn(args, laptop, pid, target, stamp)
        if "hold" in only:
            hold(args, laptop, pid, target, stamp, shadow)
            shadow.snap("after the held connections closed")
        shadow.write(args.out / "shadow-pod.md", stamp, args.hold if "hold" in only else 0)
    finally:
        if connect is not None:
            connect.stop()
        laptop.close(keep_logs=False)
        subprocess.run([*KUBECTL, "delete", "namespace", NAMESPACE, "--wait=false",
                        "--ignore-not-found"], capture_output=True, check=False)  # fmt: skip


def dns(args: argparse.Namespace, laptop: Laptop, suite: Suite, connect: Ktpy,
        shadow: ShadowWatch, stamp: str) -> None:  # fmt: skip
    """Where an uncached cluster name's time goes: the hops under it timed on their
    own, interleaved round by round (cluster DNS from a pod, the shadow pod's
    dnsmasq from inside the pod over TCP as ktpy asks it, a request through the
    tunnel with and without the TUN child, ktpy's server with the name cached),
    then the CPU each of connect's processes spends per uncached lookup and a
    py-spy profile of them meanwhile."""
    server = connect.line(r"DNS (\S+):53 via").group(1)
    fresh = f"10-{{}}.{NAMESPACE}.pod.cluster.local"
    cached = f"echo.{NAMESPACE}.svc.cluster.local"
    env = "{.spec.containers[0].env[?(@.name=='KTPY_DNS_PORT')].value}"
    dns_port = kubectl("-n", NAMESPACE, "get", "pod", shadow.pod, "-o", f"jsonpath={env}")
    n = str(args.dns)
    echo_pid, shadow_pid = pod_netns_pid(suite.pod_uid), pod_netns_pid(shadow.uid)
    target = [suite.cluster_ip, "80"]
    series: dict[str, Callable[[], dict[str, Any]]] = {
        "cluster DNS from the echo pod (UDP, a new pod name each time)": lambda: node_load(
            "dns", fresh, "--via", f"{config.CLUSTER_DNS_IP}:53", "--count", n,
            netns_of=echo_pid),
        "the shadow pod's dnsmasq from inside the pod (TCP on one connection, a new "
        "pod name each time)": lambda: node_load(
            "dns", fresh, "--via", f"127.0.0.1:{dns_port}", "--tcp", "--count", n,
            netns_of=shadow_pid),
        "the shadow pod's dnsmasq through connect's SOCKS proxy (TCP on one connection, "
        "a new pod name each time: the tunnel and dnsmasq, no ktpy DNS server, no TUN "
        "child)": lambda: laptop.load(
            "dns", fresh, "--via", f"127.0.0.1:{dns_port}", "--tcp", "--socks",
            str(SOCKS_PORT), "--count", n),
        "a request on one connection through connect's SOCKS proxy (the tunnel, no TUN "
        "child)": lambda: laptop.load("rr", *target, "--requests", n, "--socks",
                                      str(SOCKS_PORT)),
        "a request on one connection through the TUN device": lambda: laptop.load(
            "rr", *target, "--requests", n),
        "ktpy's DNS server from the laptop, cached name": lambda: laptop.load(
            "dns", cached, "--via", f"{server}:53", "--count", n, "--expect", suite.cluster_ip),
        "ktpy's DNS server from the laptop, a new pod name each time": lambda: laptop.load(
            "dns", fresh, "--via", f"{server}:53", "--count", n),
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in series}
    for _ in range(args.dns_rounds):
        for name, run in series.items():
            runs[name].append(run())
    p50 = {name: statistics.median(r["p50_ms"] for r in rs) for name, rs in runs.items()}
    p99 = {name: statistics.median(r["p99_ms"] for r in rs) for name, rs in runs.items()}
    failed = {name: sum(r["failed"] for r in rs if "failed" in r) for name, rs in runs.items()}
    pids = [connect.pid(), *children(connect.pid())]
    count = args.dns * args.dns_rounds
    before = host_stats.cpu_by_process()
    laptop.load("dns", fresh, "--via", f"{server}:53", "--count", str(count))
    after = host_stats.cpu_by_process()
    per_process = {role_of(pid): after.get(pid, 0.0) - before.get(pid, 0.0) for pid in pids}
    raw = args.out / "dns.txt"
    spy = record(connect.pid(), raw)
    time.sleep(1)
    # More than the series: a lookup holds each GIL for a fraction of a millisecond.
    recorded = laptop.load("dns", fresh, "--via", f"{server}:53", "--count", str(5 * count))
    stop(spy)  # py-spy writes its profile on SIGINT
    names = list(series)
    lines = ["| hop | p50 ms | p99 ms | failed |", "|---|---:|---:|---:|",
             *(f"| {name} | {p50[name]:.3f} | {p99[name]:.3f} | {failed[name]} |"
               for name in names), "",
             f"CPU per uncached lookup ({count} more, unrecorded), user + system, ms:", "",
             "| process | ms |", "|---|---:|",
             *(f"| {role} | {1000 * cpu / count:.3f} |"
               for role, cpu in sorted(per_process.items(), key=lambda kv: -kv[1])), "",
             f"While recorded: p50 {recorded['p50_ms']} ms, "
             f"p99 {recorded['p99_ms']} ms."]  # fmt: skip
    print("dns:", json.dumps({"p50": p50, "p99": p99, "cpu_s": per_process}), file=sys.stderr)
    summary = summarize(raw, "connect, TUN mode: uncached cluster names", [
        f"{stamp}. `python -m benchmarks.profile --only dns`: the hops under an "
        f"uncached lookup, {args.dns} each per round, {args.dns_rounds} rounds "
        "interleaved (medians of the rounds' figures), one at a time; then py-spy "
        f"recording connect's processes while {5 * count} uncached lookups go straight "
        "to ktpy's DNS server.", "", *lines])  # fmt: skip
    (args.out / "dns.md").write_text(summary + "\n")
    (args.out / "dns.json").write_text(json.dumps(
        {"runs": runs, "cpu_s": per_process, "recorded": recorded}, indent=1) + "\n")  # fmt: skip
    _gzip(raw)


def churn(args: argparse.Namespace, laptop: Laptop, pid: int, target: list[str],
          stamp: str) -> None:  # fmt: skip
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
    stop(spy)  # py-spy writes its profile on SIGINT
    figures = (f"without py-spy {plain['per_s']} new connections/s, p50 "
               f"{plain['p50_ms']} ms, p99 {plain['p99_ms']} ms, {plain['failed']} "
               f"failed, {cpu_ms:.2f} ms of CPU (connect's processes, user + system) per "
               f"connection; while recorded {result['per_s']}/s")  # fmt: skip
    print("churn:", figures, file=sys.stderr)
    summary = summarize(raw, "connect, TUN mode: new connections", [
        f"{stamp}. `python -m benchmarks.profile`: {args.churn} new connections "
        f"by 4 workers through the TUN device (one request each), py-spy recording "
        f"connect's processes meanwhile (which slows them: the rate here is not the "
        f"suite's).", "", f"Load: {figures}."])  # fmt: skip
    (args.out / "churn.md").write_text(summary + "\n")
    _gzip(raw)


def hold(args: argparse.Namespace, laptop: Laptop, pid: int, target: list[str], stamp: str,
         shadow: ShadowWatch) -> None:  # fmt: skip
    pids = [pid, *children(pid)]
    idle = process_stats(pids)
    idle_tree = host_stats.tree_stats(pid)
    shadow.snap(f"before {args.hold} connections")
    raw = args.out / "hold.txt"
    spy = record(pid, raw)
    proc = laptop.popen(sys.executable, "-m", "benchmarks.load", "hold", *target,
                        "--conns", str(args.hold), stdin=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    assert proc.stdin is not None
    line = proc.stderr.readline()
    stop(spy)  # py-spy writes its profile on SIGINT
    if "held" not in line:
        raise RuntimeError(f"hold: {line}")
    held = process_stats(pids)
    held_tree = host_stats.tree_stats(pid)
    shadow.snap(f"{args.hold} connections held")
    dumps = [subprocess.run([PY_SPY, "dump", "--pid", str(p)], capture_output=True,
                            text=True).stdout for p in pids]  # fmt: skip
    proc.stdin.write("go\n")
    proc.stdin.close()
    result = json.loads(proc.stdout.read().splitlines()[-1])  # type: ignore[union-attr]
    proc.wait(60)
    figures = (f"{result['answered']} of {result['connections']} answered, "
               f"{result['errors']} errors, {result['open_seconds']} s to open all; "
               f"RSS of connect's {len(pids)} processes {idle_tree.rss_bytes / 1e6:.1f} MB "
               f"idle, {held_tree.rss_bytes / 1e6:.1f} MB held; threads "
               f"{idle_tree.threads} idle, {held_tree.threads} held")  # fmt: skip
    print("hold:", figures, file=sys.stderr)
    waits = _waits(dumps)
    summary = summarize(raw, "connect, TUN mode: 1,000 connections opened and held", [
        f"{stamp}. `python -m benchmarks.profile`: {args.hold} connections through "
        f"the TUN device, each opened and answered once; py-spy recorded connect's "
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
