import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from ktpy import __version__
from ktpy.cli import cli
from ktpy.config import Settings
from ktpy.errors import NeedsRoot
from ktpy.logs import get_logger

seen: list[Settings] = []


@click.command("probe")
@click.option("--fail", type=click.Choice(["ktpy", "bug", "ctrl-c"]))
@click.pass_obj
def probe(settings: Settings, fail: str | None) -> None:
    seen.append(settings)
    get_logger("ktpy.test", session="ab12cd34").info("probing", pod="p-1")
    if fail == "ktpy":
        raise NeedsRoot("connect changes routes")
    if fail == "bug":
        raise RuntimeError("oops")
    if fail == "ctrl-c":
        raise KeyboardInterrupt
    click.echo(f"namespace={settings.namespace}")


@pytest.fixture
def with_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A throwaway command on the real group, with config and kubeconfig out of the way."""
    monkeypatch.setenv("KTPY_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    for name in ("KTPY_NAMESPACE", "KTPY_DEBUG", "KTPY_LOG_FORMAT", "KTPY_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    seen.clear()
    cli.add_command(probe)
    try:
        yield
    finally:
        cli.commands.pop("probe", None)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_help_shows_kubectls_global_options_and_only_working_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for option in (
        "--kubeconfig",
        "--context",
        "-n, --namespace",
        "--image",
        "--debug",
        "--log-format",
        "--version",
    ):
        assert option in result.output
    listed = result.output.split("Commands:", 1)[1].split()
    # Only commands proven end to end are listed.
    assert [word for word in listed if word in KNOWN_COMMANDS] == [
        "clean", "connect", "doctor", "env", "exchange", "forward", "mesh", "preview", "recover",
        "status",
    ]  # fmt: skip
    assert f"ghcr.io/ktpy/shadow:{__version__}" in result.output


KNOWN_COMMANDS = (
    "connect", "exchange", "mesh", "preview", "forward", "clean", "recover", "status", "doctor",
    "env",
)  # fmt: skip


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"ktpy {__version__}"


@pytest.mark.usefixtures("with_probe")
def test_settings_reach_the_command_with_flag_over_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTPY_NAMESPACE", "from-env")
    result = run("-n", "from-flag", "probe")
    assert result.exit_code == 0, result.output
    assert "namespace=from-flag" in result.stdout
    assert seen[0].source_of("namespace") == "flag --namespace"

    result = run("probe")
    assert "namespace=from-env" in result.stdout


@pytest.mark.usefixtures("with_probe")
def test_ktpy_error_prints_error_and_hint_with_its_exit_code() -> None:
    result = run("probe", "--fail", "ktpy")
    assert result.exit_code == NeedsRoot.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == "Error: connect changes routes"
    assert lines[-1].startswith("Hint: Run it with sudo")
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_debug_adds_the_traceback() -> None:
    result = run("--debug", "probe", "--fail", "ktpy")
    assert result.exit_code == 4
    assert "Traceback (most recent call last)" in result.stderr
    assert "Error: connect changes routes" in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_ktpy_debug_environment_also_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTPY_DEBUG", "1")
    result = run("probe", "--fail", "bug")
    assert "Traceback (most recent call last)" in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_an_unexpected_exception_is_an_internal_error() -> None:
    result = run("probe", "--fail", "bug")
    assert result.exit_code == 70
    assert "Error: RuntimeError: oops" in result.stderr
    assert "bug in ktpy" in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_ctrl_c_exits_130() -> None:
    result = run("probe", "--fail", "ctrl-c")
    assert result.exit_code == 130
    assert "Error: stopped by SIGINT" in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_bad_environment_value_is_a_config_problem() -> None:
    result = CliRunner().invoke(cli, ["probe"], env={"KTPY_SOCKS_PORT": "0"})
    assert result.exit_code == 3
    assert "KTPY_SOCKS_PORT" in result.stderr


@pytest.mark.usefixtures("with_probe")
def test_json_logs_are_one_object_per_line_with_context() -> None:
    result = run("--log-format", "json", "probe")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    probing = next(r for r in records if r["event"] == "probing")
    assert probing["session"] == "ab12cd34"
    assert probing["pod"] == "p-1"
    assert probing["level"] == "info"


@pytest.mark.usefixtures("with_probe")
def test_bad_log_format_is_a_usage_error() -> None:
    result = run("--log-format", "xml", "probe")
    assert result.exit_code == 2
    assert "'xml' is not one of" in result.stderr
    assert not seen


@pytest.mark.usefixtures("with_probe")
def test_bad_namespace_flag_is_a_usage_error_before_anything_runs() -> None:
    result = run("-n", "Bad_NS", "probe")
    assert result.exit_code == 2
    assert "'Bad_NS' is not a valid name" in result.stderr
    assert not seen
