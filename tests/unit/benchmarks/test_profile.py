"""The profile harness's reading of py-spy's collapsed stacks and of /proc, without a
bed: each sample lands in its process, thread and component, and shares of a
process's measured CPU add up to it."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks import host_stats, profile

SESSION = 'process 10:"python -m ktpy -n ns connect"'
CHILD = 'process 11:"python -m ktpy.net.tun_process --fd 3"'
HELPER = 'process 12:"python -m ktpy.host.helper --journal j"'
BOOT = "Thread._bootstrap (threading.py:995);Thread._bootstrap_inner (threading.py:1038)"
RAW = "\n".join(
    [
        f"{SESSION};thread (20): Thread-3;{BOOT};Transport.run (paramiko/transport.py:2200);"
        "Packetizer.read_message (paramiko/packet.py:521) 30",
        f"{SESSION};thread (21): Thread-9 (relay);{BOOT};_copy (ktpy/net/relay.py:84) 10",
        f"{SESSION};{CHILD};thread (30): MainThread;<module> (ktpy/net/tun_process.py:420);"
        "TunStack._loop (ktpy/net/tun_tcp.py:464) 15",
        f"{SESSION};{CHILD};thread (31): Thread-2 (_read_app);{BOOT};"
        "Condition.wait (threading.py:327) 5",
        f"{SESSION};{HELPER};thread (40): MainThread;serve (ktpy/host/helper.py:300) 1",
        "not a sample line",
    ]
)


def test_samples_are_put_in_their_process_thread_and_component(tmp_path: Path) -> None:
    raw = tmp_path / "bulk.txt"
    raw.write_text(RAW)
    samples = profile._samples(raw)
    assert [(p, n) for p, _, _, n in samples] == [
        ("connect (session process)", 30),
        ("connect (session process)", 10),
        ("TUN child (ktpy.net.tun_process)", 15),
        ("TUN child (ktpy.net.tun_process)", 5),
        ("root helper (ktpy.host.helper)", 1),
    ]
    _, thread, calls, _ = samples[0]
    assert profile.thread_role(thread, calls) == "Thread: Transport.run (paramiko/transport.py)"
    assert profile.thread_role(*samples[1][1:3]) == "relay: _copy (ktpy/net/relay.py)"
    assert profile.component(calls[-1]) == "paramiko's packetizer (framing, cipher calls, MAC)"
    assert profile.component(samples[3][2][-1]).startswith("threading")
    assert profile.component("f (elsewhere.py:1)") == "other"


def test_each_thread_gets_its_cpu_per_gib_and_where_it_sat(tmp_path: Path) -> None:
    raw = tmp_path / "bulk.txt"
    raw.write_text(RAW)
    cpu = {
        ("connect (session process)", 20): (0.5, 0.1),
        ("connect (session process)", 21): (0.1, 0.1),
        ("connect (session process)", 22): (0.1, 0.0),  # started and ended between samples
        ("TUN child (ktpy.net.tun_process)", 30): (0.1, 0.2),
    }
    text = "\n".join(profile.threads_summary(raw, cpu, gib=0.1, seconds=1.0))
    assert "### connect (session process): 9.00 CPU s per GiB (2.00 of it in the kernel)" in text
    assert (
        "| 6.00 | 1.00 | 60 | `Thread: Transport.run (paramiko/transport.py)` | "
        "`Packetizer.read_message (paramiko/packet.py:521)` 100% (paramiko's packetizer"
    ) in text
    assert "| 1.00 | 0.00 | 10 | `thread 22 (not sampled)` |" in text
    assert text.index("### connect") < text.index("### TUN child")
    summary = profile.summarize(raw, "t", [])
    assert "## connect (session process): 40 samples" in summary
    assert "## root helper (ktpy.host.helper): 1 samples" in summary


def test_thread_cpu_reads_this_process_threads() -> None:
    cpu = profile.thread_cpu([os.getpid()])
    assert (profile.role_of(os.getpid()), os.getpid()) in cpu


def test_process_memory_reads_this_process() -> None:
    memory = host_stats.process_memory(os.getpid())
    assert memory["comm"]
    assert 0 < int(memory["RssAnon"]) <= int(memory["VmRSS"])
    assert 0 < int(memory["heap_rss"]) <= int(memory["VmRSS"])
    assert int(memory["Pss"]) > 0
