"""Plain-process supervision for the bed's daemons (there is no systemd here).

Each daemon runs in its own session with its output in LOG_DIR/<name>.log and
its pid plus kernel start time in RUN_DIR/pids/<name>: the start time guards
against signalling an unrelated process that reused the pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import config

PID_DIR = config.RUN_DIR / "pids"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[19]


def _pidfile(name: str) -> Path:
    return PID_DIR / name


def pid_of(name: str) -> int | None:
    """The daemon's pid if the process recorded for it is still that process."""
    try:
        pid_text, started = _pidfile(name).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    # A zombie is dead even though /proc still lists it (its reaper may be slow or absent).
    return pid if _start_time(pid) == started and not _is_zombie(pid) else None


def alive(name: str) -> bool:
    return pid_of(name) is not None


def start(name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    if (pid := pid_of(name)) is not None:
        return pid
    config.LOG_DIR.mkdir(parents=True, exist_ok=True)
    PID_DIR.mkdir(parents=True, exist_ok=True)
    with (config.LOG_DIR / f"{name}.log").open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `up`, and a Ctrl-C at the shell does not reach it
            env={**os.environ, **(env or {})},
        )
    started = _start_time(proc.pid)
    _pidfile(name).write_text(f"{proc.pid} {started}\n")
    return proc.pid


def stop(name: str, timeout: float = 15.0) -> None:
    pid = pid_of(name)
    if pid is not None:
        _signal_wait(pid, timeout)
    _pidfile(name).unlink(missing_ok=True)


def _signal_wait(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) is None or _is_zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _start_time(pid) is not None and not _is_zombie(pid):
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_matching(exe_paths: Sequence[Path]) -> list[int]:
    """Kill every process whose executable is one of exe_paths (a killed `up` may leave
    daemons without pid files). Returns the pids killed."""
    targets = {str(p.resolve()) for p in exe_paths}
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = str((entry / "exe").readlink())
        except OSError:
            continue
        if exe.removesuffix(" (deleted)") in targets:
            killed.append(int(entry.name))
            _signal_wait(int(entry.name), 10.0)
    return killed


def run(
    argv: Sequence[str], check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def wait_for(what: str, probe: object, timeout: float, interval: float = 0.5) -> None:
    """Call probe() until it returns truthy; raise TimeoutError naming what did not come."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception as exc:  # noqa: BLE001 - the probe's failure is the reason we keep waiting
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"{what} not ready after {timeout:.0f}s" + (f" (last error: {last})" if last else "")
    )
