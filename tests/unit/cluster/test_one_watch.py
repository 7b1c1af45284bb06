"""Every wait and follower watches through the API's one watch helper
(ktpy.cluster.api.watching): no module calls the API's ``watch`` itself."""

from __future__ import annotations

import ast
from pathlib import Path

import ktpy

PACKAGE = Path(ktpy.__file__).parent
# The helper itself, and the client that implements ClusterApi.watch.
ALLOWED = {PACKAGE / "cluster" / "api" / "watching.py", PACKAGE / "cluster" / "api" / "client.py"}


def watch_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "watch"
    ]


def test_only_the_watch_helper_calls_the_apis_watch() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ALLOWED and (lines := watch_calls(path))
    }
    assert offenders == {}


def test_the_check_finds_a_watch_call(tmp_path: Path) -> None:
    # The scan above would pass vacuously if it could not see a call.
    module = tmp_path / "m.py"
    module.write_text("def f(api):\n    return api.watch('Pod', 'ns')\n")
    assert watch_calls(module) == [2]
