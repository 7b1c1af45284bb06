"""The ``ktpy`` command: kubectl's global options, settings, logging and error display."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
from click.shell_completion import ShellComplete

from ktpy import __version__, logs, params, progress
from ktpy.cluster.api import ApiError, for_user
from ktpy.commands import COMMANDS, completion, context
from ktpy.config import DEFAULT_IMAGE, Settings, load_settings
from ktpy.errors import InternalError, Interrupted, KtpyError
from ktpy.host import heal


def global_options() -> list[click.Option]:
    """kubectl's global options, declared once: the group and every command take them,
    before or after the command's name, with the same meaning (the last one given wins).
    kt-connect's spellings (-i, -d, --podCreationTimeout) are hidden aliases."""
    remember = context.remember_global_flag
    return [
        click.Option(
            ["--kubeconfig"],
            metavar="PATH[:PATH...]",
            expose_value=False,
            callback=remember,
            help="Kubeconfig file(s), read as kubectl reads them.  "
            "[default: $KUBECONFIG, else ~/.kube/config]",
        ),
        click.Option(
            ["--context"],
            metavar="NAME",
            expose_value=False,
            callback=remember,
            help="Kubeconfig context.  [default: the current context]",
        ),
        click.Option(
            ["-n", "--namespace"],
            type=params.NAME,
            expose_value=False,
            callback=remember,
            shell_complete=completion.namespaces,
            help="Namespace to work in.  [default: the context's namespace, else default]",
        ),
        params.AliasedOption(
            ["--image"],
            hidden_aliases=("-i",),
            type=params.IMAGE,
            expose_value=False,
            callback=remember,
            help=f"Shadow pod image.  [default: {DEFAULT_IMAGE}]",
        ),
        params.AliasedOption(
            ["--debug"],
            hidden_aliases=("-d",),
            is_flag=True,
            default=None,
            expose_value=False,
            callback=remember,
            help="Debug logs, and a traceback with every error.",
        ),
        click.Option(
            # kt-connect's global --podCreationTimeout (seconds): ktpy's pod-start-timeout
            # setting (KTPY_POD_START_TIMEOUT), which has no flag of its own.
            ["--podCreationTimeout", "pod_start_timeout"],
            type=params.DURATION,
            hidden=True,
            expose_value=False,
            callback=remember,
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice([f.value for f in logs.LogFormat]),
            default=None,
            expose_value=False,
            callback=remember,
            help="Logs for people (console) or machines (json, one object per line).  "
            "[default: console]",
        ),
    ]


def start(ctx: click.Context) -> Settings:
    """Once every option is parsed (the command's own too): settings, logging, and the
    note of a killed session's host changes."""
    flags = context.global_flags(ctx)
    if flags.get("log_format") is not None:
        flags["log_format"] = logs.LogFormat(flags["log_format"])
    settings = load_settings(flags)
    logs.configure(settings.log_format, debug=settings.debug)
    progress.configure(enabled=settings.log_format is logs.LogFormat.CONSOLE)
    # Contexts copy their parent's obj when made: set it on the command's and up.
    here: click.Context | None = ctx
    while here is not None:
        here.obj = settings
        here = here.parent
    root = ctx.find_root()
    # Heal before harm: connect puts a killed session's host changes back itself, clean
    # --local is the cure; every other command names them before anything else.
    if root.invoked_subcommand not in ("connect", "clean") and (
        line := heal.notice(settings.journal_dir)
    ):
        click.echo(f"Note: {line}", err=True)
    return settings


def _started_first(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        start(click.get_current_context())
        return callback(*args, **kwargs)

    return run


class KtpyGroup(click.Group):
    """A group that gives each of its commands the global options, resolves the settings
    once the command's options are parsed, and maps every failure to a KtpyError, with a
    traceback under --debug: an API answer to its own exit code, an unexpected exception
    to InternalError (70)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not getattr(cmd, "_ktpy_global_options", False):
            cmd.params.extend(global_options())
            if cmd.callback is not None:
                cmd.callback = _started_first(cmd.callback)
            cmd._ktpy_global_options = True  # type: ignore[attr-defined]
        super().add_command(cmd, name)

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
        except ApiError as exc:
            # An API answer no caller handled (5xx or 429 after retries, say): the
            # user's error with its own exit code, not a bug.
            self._maybe_traceback(ctx)
            raise for_user(exc) from exc
        except Exception as exc:
            self._maybe_traceback(ctx)
            raise InternalError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _maybe_traceback(ctx: click.Context) -> None:
        settings = ctx.obj
        debug = bool(context.global_flags(ctx).get("debug")) or (
            isinstance(settings, Settings) and settings.debug
        )
        if debug:
            click.echo(traceback.format_exc().rstrip(), err=True)


@click.group(
    cls=KtpyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="ktpy", message="%(prog)s %(version)s")
def cli() -> None:
    """Put this machine inside a Kubernetes cluster, through a shadow pod and an SSH tunnel.

    \b
    Settings come from, highest first: these flags, KTPY_* environment
    variables, ~/.config/ktpy/config.yaml, built-in defaults. The flags
    may also come after the command, as in kubectl: ktpy exchange nginx -n demo.
    """


cli.params[:0] = global_options()

for _command in COMMANDS:
    cli.add_command(_command)


def _nowhere() -> TextIO:
    return Path(os.devnull).open("w")


def _logs_before_the_command() -> None:
    """Logging until a command configures its own (cli.start): to stderr, and while
    the shell asks for completions, nowhere, since stdout is the shell's to read and
    stderr would land on the user's prompt."""
    if "_KTPY_COMPLETE" in os.environ:
        logs.configure(stream=_nowhere())
    else:
        logs.configure()


def main() -> None:
    _logs_before_the_command()
    cli.main(prog_name="ktpy")


def kubectl_plugin() -> None:
    """``kubectl ktpy ...``: kubectl runs the ``kubectl-ktpy`` script on PATH with the
    rest of the line; usage lines then read as the user typed them."""
    _logs_before_the_command()
    cli.main(prog_name="kubectl ktpy", complete_var="_KTPY_COMPLETE")


def kubectl_plugin_completion() -> None:
    """``kubectl_complete-ktpy``: kubectl (1.26 and later) completes ``kubectl ktpy ...``
    by running it with the words after ``ktpy``, the one being typed last; it reads one
    candidate per line and then cobra's directive (``:4``: no file names)."""
    logs.configure(stream=_nowhere())  # stdout is kubectl's to read
    args = sys.argv[1:]
    incomplete = args.pop() if args else ""
    completer = ShellComplete(cli, {}, "kubectl ktpy", "_KTPY_COMPLETE")
    for item in completer.get_completions(args, incomplete):
        click.echo(item.value)
    click.echo(":4")
