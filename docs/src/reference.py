"""Writes docs/reference.md from ktpy's Click definitions (whatever commands and
options the tree holds), so the reference never says what the code does not.

    python docs/src/reference.py           # rewrite docs/reference.md
    python docs/src/reference.py --check   # exit 1 if it is stale

tests/unit/test_docs.py fails when the file differs from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "reference.md"
HEADER = """# Command reference

Generated from ktpy's Click definitions by `docs/src/reference.py`; do not edit by
hand (`python docs/src/reference.py` rewrites it, and a test fails when it is stale).
How the pieces fit: [architecture.md](architecture.md); when something fails:
[troubleshooting.md](troubleshooting.md). Every command also takes `-h`/`--help`, and
the options of the commands above it where it repeats them (kubectl's habit of
`-n NAMESPACE` after the command).
"""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _help_text(command: click.Command) -> str:
    """The docstring as Click shows it: paragraphs, with \\b blocks kept verbatim."""
    text = command.help or ""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].strip() == "\b":
            body = lines[1:]
            indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
            out.append("```\n" + "\n".join(x[indent:] for x in body) + "\n```")
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _inherited(ctx: click.Context) -> set[tuple[str, ...]]:
    """The options of the commands above: a command that repeats them (so they may come
    after it, as in kubectl) lists only its own."""
    found: set[tuple[str, ...]] = set()
    parent = ctx.parent
    while parent is not None:
        found |= {tuple(p.opts) for p in parent.command.params if isinstance(p, click.Option)}
        parent = parent.parent
    return found


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    inherited = _inherited(ctx)
    for param in command.get_params(ctx):
        if tuple(param.opts) in inherited:
            continue
        # The help option is left out (the header names it once): Click caches it per
        # command, so its spelling would depend on which context asked first.
        if not isinstance(param, click.Option) or param.hidden or "--help" in param.opts:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        rows.append(f"| `{_escape(names)}` | {_escape(help_text)} |")
    if not rows:
        return []
    return ["| option | what it does |", "|---|---|", *rows]


def _section(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    settings = {**command.context_settings, "max_content_width": 100}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    usage = " ".join(command.collect_usage_pieces(ctx))
    level = "#" * min(len(path) + 1, 4)
    title = " ".join(path)
    lines = [f"{level} {title}", "", "```", f"{title} {usage}".rstrip(), "```", ""]
    if command.help:
        lines += [_help_text(command), ""]
    table = _options(command, ctx)
    if table:
        lines += [*table, ""]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _section(sub, [*path, name], ctx)
    return lines


def render() -> str:
    from ktpy.cli import cli

    return "\n".join([HEADER, *_section(cli, ["ktpy"], None)]).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print("docs/reference.md is stale: run python docs/src/reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
