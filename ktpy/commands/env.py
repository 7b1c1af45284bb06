"""`ktpy env TARGET`: the environment and files a workload's container gets, on this
machine, to run local code with (read through the API, never by exec)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click

from ktpy import params
from ktpy.cluster.workload_env import Environment, EnvProblem, parse_target, read_environment
from ktpy.commands.context import make_api, settings_of
from ktpy.errors import UsageProblem, WorkloadUnreadable
from ktpy.workload_files import (
    FORMATS,
    SECRET_WARNING,
    remove_made,
    render,
    write_files,
    write_private,
)


def read(ctx: click.Context, target: str, container: str | None) -> Environment:
    settings = settings_of(ctx)
    api = make_api(settings)
    try:
        return read_environment(api, settings.namespace, target, container)
    except EnvProblem as exc:
        raise WorkloadUnreadable(str(exc)) from None


def _target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """TARGET checked before any request: a kind ktpy reads and an object name."""
    try:
        _, name = parse_target(value)
    except EnvProblem as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    if not params.is_dns1123_subdomain(name):
        raise click.BadParameter(
            f"{name!r} is not an object name: lowercase letters, digits, '-' and '.', "
            "at most 253 characters",
            ctx,
            param,
        )
    return value


def _container(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not params.is_dns1123_label(value):
        raise click.BadParameter(f"{value!r} is not a container name", ctx, param)
    return value


@click.command()
@click.argument("target", callback=_target)
@click.option("-c", "--container", callback=_container, help="The container.  [default: the first]")
@click.option(
    "--env-file", type=click.Path(dir_okay=False, path_type=Path), help="Write the variables here."
)
@click.option(
    "--mount-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the container's ConfigMap, Secret and projected files under this directory.",
)
@click.option("-o", "--output", type=click.Choice(FORMATS), help="Print the variables.")
@click.option("--keep", is_flag=True, help="With -- CMD: keep the files written for it.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ARGS...]")
@click.pass_context
def env(
    ctx: click.Context,
    target: str,
    container: str | None,
    env_file: Path | None,
    mount_dir: Path | None,
    output: str | None,
    keep: bool,
    command: tuple[str, ...],
) -> None:
    """The environment (and files) of TARGET's container, here.

    \b
    TARGET as kubectl writes it: deploy/NAME, statefulset/NAME, pod/NAME, svc/NAME;
    a bare NAME is a Deployment. Values come from its first ready pod, through the
    API: every valueFrom (ConfigMaps, Secrets, the pod's fields, its resources),
    envFrom with prefixes, $(VAR) references and the Services' link variables, in
    Kubernetes' order. The image's own ENV and what the runtime adds (HOSTNAME,
    HOME, PATH) cannot be seen through the API and are not included.
        ktpy env deploy/web -o dotenv
        ktpy env deploy/web --mount-dir /tmp/web -- npm start
    Secret values are printed only with -o; files are 0600 in 0700 directories.
    """
    if command and command[0] == "--":
        command = command[1:]
    if output is None and env_file is None and mount_dir is None and not command:
        output_hint = "Use -o dotenv|json|shell to print them, --env-file to write them."
    else:
        output_hint = ""
    if env_file is not None and env_file.exists() and env_file.is_dir():
        raise UsageProblem(f"--env-file {env_file} is a directory")
    found = read(ctx, target, container)
    for note in found.notes:
        click.echo(f"Note: {note}", err=True)
    if output is not None:
        click.echo(render(found.env, output))
    if env_file is not None:
        write_private(env_file, (render(found.env, "dotenv") + "\n").encode())
        click.echo(SECRET_WARNING.format(what=str(env_file)), err=True)
    where: dict[str, str] = {}
    made: list[Path] = []
    if mount_dir is not None:
        where = write_files(mount_dir, found.files, made)
        click.echo(SECRET_WARNING.format(what=str(mount_dir)), err=True)
    if output_hint:
        click.echo(
            f"{len(found.env)} variables and {len(found.files)} files of pod {found.pod} "
            f"(container {found.container}). {output_hint}"
        )
    if not command:
        return
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise UsageProblem(f"command not found: {command[0]}")
    try:
        done = subprocess.run(command, env={**os.environ, **found.env, **where}, check=False)
    finally:
        if not keep:
            remove_made(made)
    ctx.exit(done.returncode)
