"""`ktpy clean`: remove what dead or stale sessions left in the cluster, and put
back what they modified. A live session is never touched."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from ktpy import params
from ktpy.cluster import inventory, sweep
from ktpy.commands.context import make_api, settings_of
from ktpy.durations import format_duration
from ktpy.errors import KtpyError, UndoFailed
from ktpy.host import recovery
from ktpy.session import check_local_process


@click.command()
@click.option(
    "--thresholdInMinus",
    "threshold_minutes",
    type=click.IntRange(min=1),
    hidden=True,
    help="kt-connect's spelling of --threshold, in minutes.",
)
@click.option(
    "--threshold",
    type=params.DURATION,
    default=None,
    help="A session whose heartbeat is older than this is stale.  [default: stale-after, 3m]",
)
@click.option(
    "--dry-run",
    cls=params.AliasedOption,
    hidden_aliases=("--dryRun",),
    is_flag=True,
    help="Say what would be done; change nothing.",
)
@click.option("-A", "--all-namespaces", is_flag=True, help="Clean every namespace.")
@click.option(
    "--local",
    cls=params.AliasedOption,
    hidden_aliases=("--localOnly",),
    is_flag=True,
    help="Only undo this machine's changes (routes, TUN device, resolver) left by a "
    "crashed ktpy connect, from its journal. Needs the same rights as connect (sudo).",
)
@click.pass_context
def clean(
    ctx: click.Context,
    threshold_minutes: int | None,
    threshold: timedelta | None,
    dry_run: bool,
    all_namespaces: bool,
    local: bool,
) -> None:
    """Delete the objects of dead or stale sessions and restore what they modified.

    A session whose process on this machine is gone counts as dead at once; one
    of another machine, once its heartbeat is older than the threshold (at least
    twice the heartbeat interval). Live sessions are never touched.
    """
    settings = settings_of(ctx)
    if local:
        _clean_local(settings.journal_dir, dry_run)
        return
    if threshold is None and threshold_minutes is not None:
        threshold = timedelta(minutes=threshold_minutes)
    threshold = threshold or settings.stale_after
    sweep.check_threshold(threshold, settings.heartbeat_interval)
    api = make_api(settings)
    namespace = None if all_namespaces else settings.namespace
    now = api.server_time()
    plan = sweep.plan_clean(
        inventory.modified_objects(api, namespace),
        inventory.created_objects(api, namespace),
        now=now,
        threshold=threshold,
        interval=settings.heartbeat_interval,
        check_local=check_local_process,
    )
    for ref, reason in plan.unreadable:
        click.echo(f"cannot restore {ref}: {reason}", err=True)
    if plan.is_empty:
        click.echo(
            f"Nothing to clean ({len(plan.live_sessions)} live session(s) left alone, "
            f"threshold {format_duration(threshold)})."
        )
        return
    if dry_run:
        for restoration in plan.restore:
            click.echo(f"would restore {restoration.ref}")
        for ref in plan.delete:
            click.echo(f"would delete {ref}")
        for ref, mark in plan.stale_marks:
            click.echo(f"would remove the route {mark.header} of session {mark.session} from {ref}")
        return
    report = sweep.carry_out(api, plan)
    for verb, ref in report.done:
        click.echo(f"{verb} {ref}")
    problems = report.problems
    click.echo(
        f"Cleaned {len(plan.removed_sessions)} session(s); "
        f"{len(plan.live_sessions)} live session(s) left alone."
    )
    if problems:
        raise KtpyError("; ".join(problems), hint="Run ktpy clean again, or use --debug.")


def _clean_local(journal_dir: Path, dry_run: bool) -> None:
    if dry_run:
        infos = recovery.list_journals(journal_dir) if journal_dir.exists() else []
        for info in infos:
            click.echo(f"journal {info.path}")
        if not infos:
            click.echo(f"No journals in {journal_dir}.")
        return
    report = recovery.clean_local(journal_dir)
    for line in report.lines():
        click.echo(line)
    if not report.complete:
        raise UndoFailed(
            "some host changes could not be undone",
            hint=f"See the lines above; the journal stays in {journal_dir} for another try.",
        )
