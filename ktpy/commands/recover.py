"""`ktpy recover SVC`: put back, now, a Service (and the Deployment behind it) that a
crashed exchange left modified, exactly as it was; delete that session's shadow."""

from __future__ import annotations

import click

from ktpy import params
from ktpy.cluster import inventory, labels, modify, redirect, sweep
from ktpy.cluster.api import ClusterApi, Kind
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.lock import Decision
from ktpy.commands import completion
from ktpy.commands.context import make_api, settings_of
from ktpy.session import judge_holder


def _modified_deployments(
    api: ClusterApi, namespace: str, selector: dict[str, str]
) -> list[JsonObject]:
    """Deployments ktpy modified whose pods the Service selects (scale mode)."""
    listed = api.list_objects(Kind.DEPLOYMENT, namespace, label_selector=labels.MODIFIED_SELECTOR)
    return [d for d in listed.items if redirect.selects_pods_of(selector, d)]


@click.command()
@click.argument("service", type=params.SERVICE, shell_complete=completion.services)
@click.option("--force", is_flag=True, help="Also when the session holding it still looks live.")
@click.pass_context
def recover(ctx: click.Context, service: str, force: bool) -> None:
    """Restore SERVICE (and a Deployment scaled to 0 for it) as it was before an exchange.

    The session that changed it is judged first: if it is live (a fresh
    heartbeat, or its process runs on this machine) recover refuses unless
    --force, and that session then stops by itself. A session of this machine
    whose process is gone counts as dead at once, whatever its heartbeat.
    """
    settings = settings_of(ctx)
    api = make_api(settings)
    namespace = settings.namespace
    body = inventory.get_service(api, namespace, service)
    targets: list[JsonObject] = [body] if modify.is_modified(body) else []
    targets += _modified_deployments(api, namespace, redirect.original_selector(body))
    if not targets:
        click.echo(f"Service {service} carries no change of ktpy; nothing to recover.")
        return
    now = api.server_time()
    sessions = inventory.namespace_sessions(api, namespace)
    holders: list[str | None] = []
    for target in targets:
        judgement = judge_holder(target, sessions, now=now, stale_after=settings.stale_after)
        if judgement.decision is Decision.HELD and not force:
            refusal = judgement.refusal(service, now)
            refusal.hint = (
                "That session is still live; stop it there. If it is not, "
                f"'ktpy recover {service} --force' restores anyway."
            )
            raise refusal
        holder = modify.modifier_session(target)
        if holder not in holders:
            holders.append(holder)
    done: list[str] = []
    for holder in holders:
        also = body if holder == modify.modifier_session(body) else None
        done += sweep.release(api, namespace, holder, also=also)
    for line in done:
        click.echo(line[0].upper() + line[1:])
    click.echo(f"Service {service} recovered.")
