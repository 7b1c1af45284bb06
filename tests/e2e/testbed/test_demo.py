"""The README's demo section, run as written (issue 18): its commands verbatim, in a
laptop of this test's own (KTBED_LAPTOP), and the output it promises checked line
by line. The demo runs the seed article's commands as the article writes them
(`ktpy exchange nginx --expose 3001:80 -n demo-time`, mesh with `--versionMark
foobar`, `ktpy preview nginx-local --expose 3001:8080 -n demo-time`) and checks
each answer itself; it must finish on a warm bed within three minutes."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

from tests.e2e.conftest import Bed, Laptop, RunningKtpy
from tests.e2e.testbed import config, demo

README = config.REPO_ROOT / "README.md"
SECTION = "## A guided demo on the test bed"
DEMO_BUDGET = 180.0


def code_blocks(section: str) -> list[list[str]]:
    """The indented code blocks of a README section, in order."""
    text = README.read_text()
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in body.splitlines():
        if line.startswith("    "):
            current.append(line[4:])
        elif line.strip() and current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def commands_and_promises() -> list[tuple[list[str], list[str]]]:
    """Each block of commands (every line starts with scripts/) with the output
    the README promises for it (the blocks that follow it)."""
    pairs: list[tuple[list[str], list[str]]] = []
    for block in code_blocks(SECTION):
        if all(line.startswith("scripts/") for line in block if line.strip()):
            pairs.append((block, []))
        else:
            assert pairs, f"output before any command in the README: {block}"
            pairs[-1][1].extend(block)
    return pairs


def in_order(promised: list[str], output: str) -> list[str]:
    """The promised lines missing from output (stripped lines, in the promised order)."""
    lines = [line.strip() for line in output.splitlines()]
    missing, at = [], 0
    for wanted in (p.strip() for p in promised if p.strip()):
        try:
            at = lines.index(wanted, at) + 1
        except ValueError:
            missing.append(wanted)
    return missing


def run_verbatim(command: str, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        shlex.split(command),
        cwd=config.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def test_the_readme_demo_section_runs_as_written(bed: Bed, laptop: Laptop) -> None:
    env = {**os.environ, "KTBED_LAPTOP": str(laptop.number)}
    (demo_commands, demo_promises), (laptop_commands, laptop_promises) = commands_and_promises()
    assert demo_commands == ["scripts/demo"]

    started = time.monotonic()
    output = run_verbatim(demo_commands[0], env, timeout=DEMO_BUDGET + 60)
    took = time.monotonic() - started
    assert not in_order(demo_promises, output), output
    assert f"from {laptop.name}" in output  # the laptop KTBED_LAPTOP named, not laptop-2
    # The session commands each ended on Ctrl-C with their one line, connect's last.
    endings = [line.strip() for line in output.splitlines() if "Stopped by Ctrl-C after" in line]
    assert len(endings) == 4, output
    assert "removed the TUN device" in endings[-1]
    assert "Demo done in" in output.splitlines()[-1]
    assert took < DEMO_BUDGET, f"the demo took {took:.0f}s"
    # Nothing of ktpy's stays; nginx is itself again.
    assert bed.ktpy_objects(demo.NAMESPACE) == []
    service = bed.get_json("-n", demo.NAMESPACE, "service", "nginx")
    assert service["spec"]["selector"] == {"app": "nginx"}

    # "While scripts/laptop ktpy connect runs in one terminal, in another: ..."
    connect = RunningKtpy(
        subprocess.Popen(
            ["scripts/laptop", "ktpy", "connect"],
            cwd=config.REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    try:
        connect.wait_ready(timeout=60)
        for command in laptop_commands:
            answer = run_verbatim(command, env, timeout=60)
            assert not in_order(laptop_promises, answer), answer
    finally:
        code = connect.stop(signal.SIGINT)
    assert code == 128 + signal.SIGINT
    assert any(line.startswith("Stopped by Ctrl-C after") for line in connect.all_errors())
