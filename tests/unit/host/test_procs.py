import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktpy.host import procs
from ktpy.host.procs import Host, Identity, ProcessState


def fake_proc(tmp_path: Path, boot: str, stats: dict[int, str]) -> Path:
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text(boot + "\n")
    for pid, comm_and_rest in stats.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} {comm_and_rest}\n")
    return tmp_path


def stat_line(comm: str, start: int, state: str = "S") -> str:
    # Fields 3..52 with starttime (field 22) set; the others are filler.
    rest = [state] + [str(n) for n in range(4, 22)] + [str(start)] + ["0"] * 30
    return f"({comm}) " + " ".join(rest)


def test_start_ticks_survives_odd_command_names(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "b1", {10: stat_line("a) (b c", 777)})
    assert procs.start_ticks(10, proc) == 777
    assert procs.start_ticks(11, proc) is None


def test_a_zombie_has_ended(tmp_path: Path) -> None:
    """Killed, not yet reaped (its parent is slow, or it is an orphan): gone all the same."""
    proc = fake_proc(tmp_path, "b1", {10: stat_line("ktpy", 777, state="Z")})
    assert procs.start_ticks(10, proc) is None


HERE = Host(boot_id="b1", pid_ns=4001, time_ns=5001, hostname="laptop-8", proc_is_own=True)
RUNNING = {10: 777}  # what this host's process table shows: pid -> start ticks


def ticks_of(pid: int) -> int | None:
    return RUNNING.get(pid)


def record(
    *, boot: bool, pid_ns: bool, host: bool, time_ns: bool = True, pid: int = 10
) -> Identity:
    return Identity(
        pid,
        777,
        "b1" if boot else "b0",
        4001 if pid_ns else 4002,
        5001 if time_ns else 5002,
        "laptop-8" if host else "laptop-9",
    )


@pytest.mark.parametrize(
    ("boot", "pid_ns", "host", "time_ns"), list(itertools.product([True, False], repeat=4))
)
@pytest.mark.parametrize("running", [True, False])
def test_the_process_table_decides_only_for_a_provably_local_owner(
    boot: bool, pid_ns: bool, host: bool, time_ns: bool, running: bool
) -> None:
    """Every combination of same/other boot, PID namespace, hostname and time namespace:
    only all-same is judged by the process table; anything else is ELSEWHERE (the
    heartbeat or the journal lock decides), whether or not a pid matches here."""
    owner = record(boot=boot, pid_ns=pid_ns, host=host, time_ns=time_ns, pid=10 if running else 12)
    verdict = procs.judge(owner, HERE, ticks_of)
    if boot and pid_ns and host and time_ns:
        assert verdict is (ProcessState.ALIVE if running else ProcessState.GONE)
    else:
        assert verdict is ProcessState.ELSEWHERE


def test_a_reused_pid_is_gone() -> None:
    owner = Identity(10, 778, "b1", 4001, 5001, "laptop-8")
    assert procs.judge(owner, HERE, ticks_of) is ProcessState.GONE


@pytest.mark.parametrize("running", [True, False])
def test_a_proc_of_another_pid_namespace_proves_nothing(running: bool) -> None:
    """A /proc mounted for another PID namespace lists other processes under our numbers."""
    foreign = Host("b1", procs.UNPROVABLE, 5001, "laptop-8", proc_is_own=False)
    owner = record(boot=True, pid_ns=True, host=True, pid=10 if running else 12)
    assert procs.judge(owner, foreign, ticks_of) is ProcessState.ELSEWHERE
    # And a record made under such a /proc is never judged by a process table.
    unprovable = owner._replace(pid_ns=procs.UNPROVABLE)
    assert procs.judge(unprovable, HERE, ticks_of) is ProcessState.ELSEWHERE


@pytest.mark.parametrize(("boot", "running"), list(itertools.product([True, False], repeat=2)))
def test_an_old_record_is_kept_alive_by_a_match_and_never_judged_gone(
    boot: bool, running: bool
) -> None:
    """``pid:ticks@boot`` names no namespace: a live match here keeps it alive (the safe
    direction); a miss may be a process of another PID namespace, so it proves nothing."""
    old = Identity(10 if running else 12, 777, "b1" if boot else "b0")
    expected = ProcessState.ALIVE if boot and running else ProcessState.ELSEWHERE
    assert procs.judge(old, HERE, ticks_of) is expected


def test_this_process_is_alive_and_a_finished_child_is_gone() -> None:
    me = procs.identity()
    assert me.pid == os.getpid()
    assert me.pid_ns == Path("/proc/self/ns/pid").stat().st_ino
    assert me.hostname == os.uname().nodename
    assert procs.state(me) is ProcessState.ALIVE
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child_id = procs.identity(child.pid)
        assert procs.state(child_id) is ProcessState.ALIVE
    finally:
        child.kill()
        child.wait()
    assert procs.state(child_id) is ProcessState.GONE
    # The same process read from another PID namespace's record is not ours to judge.
    assert procs.state(child_id._replace(pid_ns=1)) is ProcessState.ELSEWHERE


def test_a_process_in_its_own_pid_namespace_is_not_judged_from_outside(tmp_path: Path) -> None:
    """A process that records itself inside a new PID namespace (unshare, as a dev
    container does) is ELSEWHERE to this one, alive or not; it judges itself ALIVE."""
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare")
    script = (
        "from ktpy.host import procs; import json; me = procs.identity();"
        "print(json.dumps([list(me), procs.state(me)]))"
    )
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--uts", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(procs.__file__).parents[2])},
    ).stdout
    fields, own_verdict = json.loads(out)
    inside = Identity(*fields)
    assert own_verdict == "alive"
    assert inside.pid_ns != procs.identity().pid_ns
    assert procs.state(inside) is ProcessState.ELSEWHERE


def test_under_a_proc_of_another_pid_namespace_the_record_is_unprovable(tmp_path: Path) -> None:
    """A fake /proc whose 'self' is not this process: its own entry would be someone else's."""
    proc = fake_proc(tmp_path, "b1", {os.getpid(): stat_line("other", 5)})
    (tmp_path / "self").symlink_to("1")
    me = procs.identity(proc=proc)
    assert (me.pid, me.start_ticks, me.pid_ns) == (os.getpid(), 0, procs.UNPROVABLE)
    assert procs.state(me, proc) is ProcessState.ELSEWHERE
