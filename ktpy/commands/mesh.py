"""`ktpy mesh`: only the requests that carry this developer's header come to this machine.

The orchestration (router, stuntman, marks, routes) is ``ktpy.mesh``'s; this
module reads the command line and fills in the session lifecycle's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from ktpy import lifecycle, params
from ktpy.cluster import names
from ktpy.cluster.api import ApiError, ClusterApi
from ktpy.cluster.labels import Role
from ktpy.commands import completion
from ktpy.commands.context import make_api, settings_of
from ktpy.config import Settings
from ktpy.errors import KtpyError
from ktpy.intercept import warn_local_ports
from ktpy.mesh import MeshMember, MeshRequest, check_mesh_request
from ktpy.net.inbound import Inbound
from ktpy.params import PortMapping, VersionMark
from ktpy.session import Session, ShadowSpec
from ktpy.workload_files import remove_session_files, write_environment


def ready_line(header: str) -> str:
    return f"Now you can access your service by header '{header}'"


class Mesh(lifecycle.SessionCommand):
    # A failed join may already have switched the Service to the router: leave (and,
    # if last, restore and drain) before the pod goes, as on a normal stop.
    hurry_after_failed_start = False

    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        request: MeshRequest,
        *,
        manual: bool,
        written: list[Path] | None = None,
    ) -> None:
        self.api = api
        # Files written for this session (--env-file, --mount-dir): removed at its end.
        self.written = written or []
        self.settings = settings
        self.request = request
        self.manual = manual
        self.inbound = Inbound({f.shadow_port: f.local for f in request.forwards})
        self.member: MeshMember | None = None

    def start(self, session: Session) -> None:
        for forward in self.request.forwards:
            session.add_remote_forward(forward.shadow_port, self.inbound)
        if self.manual:
            return
        self.member = MeshMember(self.api, self.settings, self.request, session, self.inbound)
        session.heartbeat_hooks.append(self.member.beat)
        self.member.join()

    def ready_lines(self, session: Session, elapsed: float) -> list[str]:
        request = self.request
        lines = [f"Forwarding {f.describe()}" for f in request.forwards]
        lines += [
            f"Note: service port {entry.describe()} is not exposed; requests with the "
            "header to it are refused"
            for entry in request.unexposed
        ]
        if self.manual:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(session.spec.extra_labels.items()))
            lines.append(
                f"Meshed (manual): the shadow pod carries {labels}; ready in {elapsed:.1f}s"
            )
        else:
            lines.append(
                f"Meshed: requests to service {request.service} with header "
                f"'{request.header}' come here; ready in {elapsed:.1f}s"
            )
        return [*lines, ready_line(request.header)]

    def check(self, session: Session) -> None:
        error = self.member.lost_error() if self.member else None
        if error is not None:
            raise error
        super().check(session)

    def stop(self, session: Session, hurried: Callable[[], bool]) -> list[str]:
        undone = remove_session_files(self.written)
        if self.member is None:
            return undone
        try:
            return [*self.member.leave(hurried), *undone]
        except (ApiError, KtpyError) as exc:
            service = self.request.service
            click.echo(
                f"Could not leave the mesh of service {service}: {exc}; "
                f"'ktpy clean' removes it once stale, or 'ktpy recover {service}'",
                err=True,
            )
            return undone


@click.command()
@click.argument("service", type=params.SERVICE, shell_complete=completion.services)
@click.option(
    "--expose",
    type=params.EXPOSE,
    default=None,
    metavar="LOCAL:REMOTE[,...]",
    help="Local ports for the Service's ports, as in exchange.  "
    "[default: each target port to the same local port]",
)
@click.option(
    "--version-mark",
    cls=params.AliasedOption,
    hidden_aliases=("--versionMark",),
    type=params.VERSION_MARK,
    default=None,
    metavar="[KEY:]VALUE",
    help="The header (KEY, default 'version', any case) and VALUE that pick this machine.  "
    "[default: version:<5 random letters>]",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "manual"]),
    default="auto",
    show_default=True,
    help="auto: a router sends requests with the header here, the rest to the pods; "
    "manual: only a shadow pod with the Service's labels and KEY=VALUE, for Istio and "
    "other meshes that route by label.",
)
@params.session_file_options
@click.pass_context
def mesh(
    ctx: click.Context,
    service: str,
    expose: tuple[PortMapping, ...] | None,
    version_mark: VersionMark | None,
    mode: str,
    env_file: Path | None,
    mount_dir: Path | None,
    keep: bool,
) -> None:
    """Send only SERVICE's requests that carry a header to this machine, until Ctrl-C.

    \b
    Requests with header VERSION: <value> (HTTP/1.1, WebSocket, HTTP/2 and
    gRPC, where the header is metadata) come to LOCAL on this machine; all
    others still reach the Service's pods. Several developers can mesh one
    Service at once, each with their own value:
        ktpy mesh nginx --expose 3001:80 --version-mark foobar
    The last one to leave puts the Service back as it was.
    """
    settings = settings_of(ctx)
    started = time.monotonic()
    api = make_api(settings)
    mark = version_mark or VersionMark(params.DEFAULT_VERSION_MARK_KEY, None)
    manual = mode == "manual"
    request = check_mesh_request(api, settings, service, expose or (), mark, manual=manual)
    warn_local_ports(request.forwards)
    written = write_environment(api, request.namespace, service, env_file, mount_dir)
    extra = {**request.selector, request.key: request.value} if manual else {}
    spec = ShadowSpec(
        role=Role.MESH,
        namespace=request.namespace,
        pod_name=names.mesh_name(service, request.value),
        image=settings.image,
        target=f"service/{service} ({request.header})",
        ports=tuple(f.shadow for f in request.forwards),
        extra_labels=extra,
    )
    command = Mesh(api, settings, request, manual=manual, written=[] if keep else written)
    lifecycle.run(Session(api, settings, spec), command, started=started)
