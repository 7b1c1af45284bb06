"""`ktpy status`: the ktpy sessions in a namespace (or all), live or stale."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import click

from ktpy.cluster import inventory
from ktpy.cluster.heartbeat import SessionView, sessions_from_objects
from ktpy.commands.context import make_api, settings_of
from ktpy.durations import format_duration
from ktpy.session import check_local_process


def _age(delta: timedelta | None) -> str:
    return "-" if delta is None else format_duration(max(delta, timedelta(0)))


def describe(view: SessionView, now: datetime, stale_after: timedelta) -> dict[str, object]:
    liveness = view.liveness(now, stale_after, check_local_process)
    return {
        "namespace": view.namespace,
        "session": view.session_id,
        "role": view.role.value if view.role else None,
        "target": view.target,
        "owner": view.owner,
        "age": _age(view.age(now)),
        "heartbeat": _age(view.heartbeat_age(now)),
        "state": liveness.value,
        "objects": [f"{o.kind.lower()}/{o.name}" for o in view.objects],
    }


@click.command()
@click.option("-A", "--all-namespaces", is_flag=True, help="Sessions in every namespace.")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
def status(ctx: click.Context, all_namespaces: bool, output: str) -> None:
    """List ktpy sessions: role, target, owner, age, heartbeat age, live or stale."""
    settings = settings_of(ctx)
    api = make_api(settings)
    namespace = None if all_namespaces else settings.namespace
    now = api.server_time()
    views = sessions_from_objects(inventory.created_objects(api, namespace))
    rows = [describe(v, now, settings.stale_after) for v in views]
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        where = "any namespace" if all_namespaces else f"namespace {settings.namespace}"
        click.echo(f"No ktpy sessions in {where}.")
        return
    columns = ("namespace", "session", "role", "target", "owner", "age", "heartbeat", "state")
    table = [[str(row[c] if row[c] is not None else "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
