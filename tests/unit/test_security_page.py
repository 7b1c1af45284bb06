"""docs/security.md points a reviewer at tests and files: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_path_and_test_the_security_page_names_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    named = set(re.findall(r"`((?:tests|ktpy|shadow-image|docs)/[^`:]+?)(?:::(\w+))?`", text))
    assert len(named) > 10
    for path, test in named:
        if "*" in path:
            assert list(ROOT.glob(path)), path
            continue
        assert (ROOT / path).exists(), path
        if test:
            assert f"def {test}(" in (ROOT / path).read_text(), f"{path}::{test}"
