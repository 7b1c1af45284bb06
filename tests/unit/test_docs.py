"""The user docs say only what the code does: the generated reference and picture are
current, and every `ktpy ...` command line in README.md and docs/ names commands and
flags that exist in the Click tree."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

import click
import pytest

from ktpy.cli import cli

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A code span, or a line of a fenced block, that runs ktpy (after sudo, a prompt, or env).
_SPAN = re.compile(r"`([^`\n]+)`")
_RUN = re.compile(r"^\s*(?:\$\s*)?(?:sudo\s+(?:-E\s+)?)?ktpy\s+(.*)$")
_STOP = {"|", "||", "&&", ";", ">", "2>&1", "#"}


def _load(name: str) -> ModuleType:
    path = REPO / "docs" / "src" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_src_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_is_current() -> None:
    reference = _load("reference")
    assert (REPO / "docs" / "reference.md").read_text() == reference.render(), (
        "docs/reference.md is stale: run python docs/src/reference.py"
    )


def test_the_architecture_picture_is_current() -> None:
    architecture = _load("architecture")
    assert (REPO / "docs" / "architecture.svg").read_text() == architecture.render(), (
        "docs/architecture.svg is stale: run python docs/src/architecture.py"
    )


def command_lines(text: str) -> list[str]:
    """Every ktpy command line: inline code spans, and the lines of fenced blocks."""
    found = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        candidates = [line] if fenced else _SPAN.findall(line)
        for candidate in candidates:
            match = _RUN.search(candidate.replace("\\|", "|"))
            if match:
                found.append(match.group(1))
    return found


def _options_of(command: click.Command) -> dict[str, click.Parameter]:
    return {o: p for p in command.params for o in (*p.opts, *p.secondary_opts)}


def _takes_value(param: click.Parameter) -> bool:
    return isinstance(param, click.Option) and not param.is_flag and not param.count


def problems_in(line: str) -> list[str]:
    """What in one command line does not exist: a command, or a flag of it or its group."""
    try:
        words = shlex.split(line, comments=False)
    except ValueError:
        words = line.split()
    command: click.Command = cli
    name = "ktpy"
    known = _options_of(cli)
    problems = []
    value_next = False
    for raw in words:
        word = raw.strip("[]()'\",.").removesuffix("...")
        if raw in _STOP or word == "--":
            break
        if value_next:
            value_next = False
            continue
        if word.startswith("-") and len(word) > 1 and not word[1:2].isdigit():
            flag = word.split("=", 1)[0]
            param = known.get(flag)
            if param is None and flag not in ("-h", "--help"):
                problems.append(f"{flag} is no option of {name}")
            value_next = param is not None and "=" not in word and _takes_value(param)
            continue
        if isinstance(command, click.Group) and re.fullmatch(r"[a-z][a-z-]*", word):
            sub = command.commands.get(word)
            if sub is None:
                problems.append(f"{word} is no command of {name}")
                break
            command, name = sub, word
            known |= _options_of(sub)
    return problems


def test_the_checker_finds_what_does_not_exist() -> None:
    assert problems_in("connect --mode socks") == []
    assert problems_in("-n dev doctor web -o json") == []
    assert problems_in("teleport now") == ["teleport is no command of ktpy"]
    assert problems_in("connect --no-such-flag") == ["--no-such-flag is no option of connect"]
    assert command_lines("run `sudo ktpy clean --local` and\n```\n$ ktpy status -A\n```") == [
        "clean --local",
        "status -A",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_and_flag_the_docs_name_exists(page: Path) -> None:
    found = {line: problems_in(line) for line in command_lines(page.read_text())}
    wrong = {line: why for line, why in found.items() if why}
    assert not wrong, f"{page.relative_to(REPO)} names what ktpy lacks: {wrong}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_to_a_page_of_the_repository_resolves(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}"
