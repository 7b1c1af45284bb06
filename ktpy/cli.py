"""The ``ktpy`` command: kubectl's global options, settings, logging and error display."""

from __future__ import annotations

import traceback
from typing import Any

import click

from ktpy import __version__, logs, params
from ktpy.commands import COMMANDS
from ktpy.config import DEFAULT_IMAGE, Settings, load_settings
from ktpy.errors import InternalError, Interrupted, KtpyError
from ktpy.host import heal


class KtpyGroup(click.Group):
    """A group that maps every failure to a KtpyError, with a traceback under --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KtpyError:
            self._maybe_traceback(ctx)
            raise
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            self._maybe_traceback(ctx)
            raise Interrupted() from None
        except Exception as exc:
            self._maybe_traceback(ctx)
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _maybe_traceback(ctx: click.Context) -> None:
        settings = ctx.obj
        debug = bool(ctx.params.get("debug")) or (isinstance(settings, Settings) and settings.debug)
        if debug:
            click.echo(traceback.format_exc().rstrip(), err=True)


@click.group(
    cls=KtpyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--kubeconfig",
    metavar="PATH[:PATH...]",
    help="Kubeconfig file(s), read as kubectl reads them.  "
    "[default: $KUBECONFIG, else ~/.kube/config]",
)
@click.option(
    "--context", metavar="NAME", help="Kubeconfig context.  [default: the current context]"
)
@click.option(
    "-n",
    "--namespace",
    type=params.NAME,
    help="Namespace to work in.  [default: the context's namespace, else default]",
)
@click.option("--image", type=params.IMAGE, help=f"Shadow pod image.  [default: {DEFAULT_IMAGE}]")
@click.option(
    "--debug",
    is_flag=True,
    default=None,
    help="Debug logs, and a traceback with every error.",
)
@click.option(
    "--log-format",
    type=click.Choice([f.value for f in logs.LogFormat]),
    default=None,
    help="Logs for people (console) or machines (json, one object per line).  [default: console]",
)
@click.version_option(__version__, "--version", prog_name="ktpy", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, /, **flags: Any) -> None:
    """Put this machine inside a Kubernetes cluster, through a shadow pod and an SSH tunnel.

    \b
    Settings come from, highest first: these flags, KTPY_* environment
    variables, ~/.config/ktpy/config.yaml, built-in defaults.
    """
    if flags.get("log_format") is not None:
        flags["log_format"] = logs.LogFormat(flags["log_format"])
    settings = load_settings(flags)
    logs.configure(settings.log_format, debug=settings.debug)
    ctx.obj = settings
    # Heal before harm: connect puts a killed session's host changes back itself, clean
    # --local is the cure; every other command names them before anything else.
    if ctx.invoked_subcommand not in ("connect", "clean") and (
        line := heal.notice(settings.journal_dir)
    ):
        click.echo(f"Note: {line}", err=True)


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli.main(prog_name="ktpy")
