import os
import subprocess
import sys
from pathlib import Path

from ktpy.host import procs
from ktpy.host.procs import ProcessState


def fake_proc(tmp_path: Path, boot: str, stats: dict[int, str]) -> Path:
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text(boot + "\n")
    for pid, comm_and_rest in stats.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} {comm_and_rest}\n")
    return tmp_path


def stat_line(comm: str, start: int) -> str:
    # Fields 3..52 with starttime (field 22) set; the others are filler.
    rest = ["S"] + [str(n) for n in range(4, 22)] + [str(start)] + ["0"] * 30
    return f"({comm}) " + " ".join(rest)


def test_start_ticks_survives_odd_command_names(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "b1", {10: stat_line("a) (b c", 777)})
    assert procs.start_ticks(10, proc) == 777
    assert procs.start_ticks(11, proc) is None


def test_state(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "b1", {10: stat_line("ktpy", 777)})
    assert procs.state(10, 777, "b1", proc) is ProcessState.ALIVE
    assert procs.state(10, 778, "b1", proc) is ProcessState.GONE  # pid reused
    assert procs.state(12, 777, "b1", proc) is ProcessState.GONE
    assert procs.state(10, 777, "b2", proc) is ProcessState.ELSEWHERE


def test_this_process_is_alive_and_a_finished_child_is_gone() -> None:
    pid, ticks, boot = procs.identity()
    assert pid == os.getpid()
    assert procs.state(pid, ticks, boot) is ProcessState.ALIVE
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child_pid, child_ticks, _ = procs.identity(child.pid)
        assert procs.state(child_pid, child_ticks, boot) is ProcessState.ALIVE
    finally:
        child.kill()
        child.wait()
    assert procs.state(child_pid, child_ticks, boot) is ProcessState.GONE
