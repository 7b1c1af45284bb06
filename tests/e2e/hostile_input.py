"""Runs ktpy command lines in this process, one after another, and reports each one's
exit code, stderr and what changed on this machine meanwhile (ktpy.host.snapshot):
the driver of tests/e2e/test_hostile_input.py, run inside a laptop.

    python -m tests.e2e.hostile_input cases.json > results.json

A case is {"id", "args", "env"}; in-process (click's runner), so a battery of
dozens of lines takes seconds, not a Python start per line.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from click.testing import CliRunner

from ktpy.cli import cli
from ktpy.cluster.api import kubeconfig
from ktpy.host import snapshot

# The battery's hanging exec plugin must be stopped in seconds, not ktpy's 30.
kubeconfig.PLUGIN_TIMEOUT_SECONDS = 2.0


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for case in cases:
        before = snapshot.take()
        started = time.monotonic()
        result = CliRunner().invoke(cli, case["args"], env=case["env"], prog_name="ktpy")
        took = time.monotonic() - started
        after = snapshot.take()
        crash = ""
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            crash = "".join(traceback.format_exception(result.exception))
        results.append(
            {
                "id": case["id"],
                "code": result.exit_code,
                "stderr": result.stderr,
                "stdout": result.stdout,
                "crash": crash,
                "host_changes": snapshot.diff(before, after),
                "seconds": round(took, 2),
            }
        )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
