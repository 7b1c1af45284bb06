"""`ktpy exchange`: all of a Service's traffic to this machine, without dropping a request.

The order of work and the restore are ``ktpy.intercept``'s; this module reads
the command line and fills in the session lifecycle's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from ktpy import lifecycle, params
from ktpy.cluster import inventory, names
from ktpy.cluster.api import ApiError, ClusterApi
from ktpy.cluster.labels import Role
from ktpy.cluster.redirect import Mode
from ktpy.commands import completion
from ktpy.commands.context import make_api, settings_of
from ktpy.config import Settings
from ktpy.errors import KtpyError
from ktpy.intercept import Intercept, Request, check_request, describe, warn_local_ports
from ktpy.net.inbound import Inbound
from ktpy.params import PortMapping
from ktpy.session import Session, ShadowSpec
from ktpy.workload_files import remove_session_files, write_environment

READY_LINE = "All looks good, now the service's traffic comes to this machine"


class Exchange(lifecycle.SessionCommand):
    # A failed switch may already have sent callers to the shadow: restore and drain
    # them before the pod goes, as on a normal stop.
    hurry_after_failed_start = False

    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        request: Request,
        written: list[Path] | None = None,
    ) -> None:
        self.api = api
        # Files written for this session (--env-file, --mount-dir): removed at its end.
        self.written = written or []
        self.settings = settings
        self.request = request
        self.inbound = Inbound({f.shadow_port: f.local for f in request.forwards})
        self.intercept: Intercept | None = None

    def start(self, session: Session) -> None:
        self.intercept = Intercept(self.api, self.settings, self.request, session, self.inbound)
        for forward in self.request.forwards:
            session.add_remote_forward(forward.shadow_port, self.inbound)
        self.intercept.switch_in()

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        request = self.request
        what = (
            f"deployment {request.deployment} scaled to 0"
            if request.mode is Mode.SCALE
            else f"service {request.service} selects the shadow pod"
        )
        return [*describe(request), f"Exchanged: {what}; ready in {elapsed:.1f}s", READY_LINE]

    def check(self, session: Session) -> None:
        # A lock lost while the laptop slept also takes the pod: say the better reason.
        error = self.intercept.lost_error() if self.intercept else None
        if error is not None:
            raise error
        if session.lost.is_set():
            raise session.lost_error(session.lost_reason)

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        undone = remove_session_files(self.written)
        if self.intercept is None:
            return undone
        try:
            return [*self.intercept.switch_out(hurried), *undone]
        except (ApiError, KtpyError) as exc:
            service = self.request.service
            click.echo(
                f"Could not restore service {service}: {exc}; run 'ktpy recover {service}'",
                err=True,
            )
            return undone


@click.command()
@click.argument(
    "target", metavar="SERVICE", type=params.SERVICE_TARGET, shell_complete=completion.services
)
@click.option(
    "--expose",
    type=params.EXPOSE,
    default=None,
    metavar="LOCAL:REMOTE[,...]",
    help="Local ports for the Service's ports (see above).  "
    "[default: each target port to the same local port]",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.SELECTOR.value,
    show_default=True,
    help="selector: the Service selects a shadow pod; "
    "scale: the shadow joins the Deployment's pods, the Deployment goes to 0.",
)
@params.session_file_options
@click.pass_context
def exchange(
    ctx: click.Context,
    target: params.ServiceTarget,
    expose: tuple[PortMapping, ...] | None,
    mode: str,
    env_file: Path | None,
    mount_dir: Path | None,
    keep: bool,
) -> None:
    """Send all of SERVICE's traffic to this machine until Ctrl-C.

    \b
    SERVICE is a name, svc/NAME, or deploy/NAME for the Service that selects
    that Deployment's pods.

    \b
    --expose LOCAL:REMOTE[,LOCAL:REMOTE...], or a bare PORT for PORT:PORT.
    REMOTE is one of the Service's ports (number or name) or a target port
    (number, or the container port name the Service targets); where a number
    is one entry's port and another's target port, the Service port wins.
    Without --expose each TCP target port goes to the same local port number.
    Connections reach LOCAL on 127.0.0.1, else ::1; if nothing listens there,
    the caller's connection is closed at once.

    \b
    The switch happens only once the shadow pod is Ready and every forward
    listens; on exit the Service is put back first and the shadow removed
    once the original pods get the traffic again. After a crash:
    'ktpy recover SERVICE', or 'ktpy clean' once the session is stale.
    """
    settings = settings_of(ctx)
    started = time.monotonic()
    api = make_api(settings)
    service = target.name
    if target.deployment:
        service = inventory.service_of_deployment(api, settings.namespace, target.name)
    request = check_request(api, settings, service, expose or (), Mode(mode))
    warn_local_ports(request.forwards)
    written = write_environment(api, request.namespace, service, env_file, mount_dir)
    base = request.deployment if request.mode is Mode.SCALE and request.deployment else service
    spec = ShadowSpec(
        role=Role.EXCHANGE,
        namespace=request.namespace,
        pod_name=names.exchange_shadow_name(base),
        image=settings.image,
        target=f"service/{service}",
        ports=tuple(f.shadow for f in request.forwards),
    )
    session = Session(api, settings, spec)
    command = Exchange(api, settings, request, [] if keep else written)
    lifecycle.run(session, command, started=started)
