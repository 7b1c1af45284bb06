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


@pytest.mark.usefixtures("with_probe")
@pytest.mark.parametrize(
    "args",
    [
        ("-n", "demo-time", "probe"),
        ("probe", "-n", "demo-time"),
        ("probe", "--namespace=demo-time"),
        ("-n", "other", "probe", "-n", "demo-time"),  # the last one given wins, as in kubectl
    ],
)
def test_global_options_mean_the_same_before_or_after_the_command(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "namespace=demo-time" in result.stdout
    assert seen[-1].source_of("namespace") == "flag --namespace"


@pytest.mark.usefixtures("with_probe")
def test_every_global_option_is_taken_after_the_command(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "elsewhere"
    result = run(
        "probe",
        "--kubeconfig", str(kubeconfig),
        "--context", "ctx-a",
        "--image", "example.test/shadow:1",
        "--debug",
        "--log-format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = seen[-1]
    assert settings.kubeconfig == (kubeconfig,)
    assert settings.context == "ctx-a"
    assert settings.image == "example.test/shadow:1"
    assert settings.debug
    assert settings.log_format.value == "json"


@pytest.mark.usefixtures("with_probe")
def test_an_option_not_repeated_after_the_command_keeps_its_value() -> None:
    result = run("--debug", "probe", "--fail", "ktpy")
    assert "Traceback (most recent call last)" in result.stderr
    assert seen[-1].debug


@pytest.mark.usefixtures("with_probe")
def test_kt_connects_short_spellings_are_hidden_aliases() -> None:
    result = run("probe", "-i", "example.test/shadow:2", "-d", "--podCreationTimeout", "90")
    assert result.exit_code == 0, result.output
    assert seen[-1].image == "example.test/shadow:2"
    assert seen[-1].debug
    assert seen[-1].pod_start_timeout.total_seconds() == 90
    help_text = run("probe", "--help").output
    assert "podCreationTimeout" not in help_text
    assert "--image" in help_text
    assert "-i," not in help_text
    assert "-d," not in help_text


@pytest.mark.usefixtures("with_probe")
def test_a_bad_namespace_after_the_command_is_a_usage_error_before_anything_runs() -> None:
    result = run("probe", "-n", "Bad_NS")
    assert result.exit_code == 2
    assert "'Bad_NS' is not a valid name" in result.stderr
    assert not seen


@pytest.mark.parametrize(
    ("command", "alias", "option"),
    [
        ("mesh", "--versionMark", "--version-mark"),
        ("connect", "--includeIps", "--include-cidr"),
        ("connect", "--excludeIps", "--exclude-cidr"),
        ("connect", "--proxyPort", "--socks-port"),
        ("clean", "--dryRun", "--dry-run"),
        ("clean", "--localOnly", "--local"),
    ],
)
def test_kt_connect_camel_case_flags_parse_but_stay_out_of_help(
    command: str, alias: str, option: str
) -> None:
    cmd = cli.commands[command]
    by_alias = next(p for p in cmd.params if alias in getattr(p, "hidden_aliases", ()))
    assert option in by_alias.opts  # the same parameter: the same meaning
    help_text = run(command, "--help").output
    assert option in help_text
    assert alias not in help_text


def test_mesh_version_mark_alias_reaches_the_same_parameter() -> None:
    cmd = cli.commands["mesh"]
    ctx = cmd.make_context(
        "mesh", ["nginx", "--expose", "3001:80", "--versionMark", "foobar", "-n", "demo-time"]
    )
    assert str(ctx.params["version_mark"].value) == "foobar"
    assert ctx.params["service"] == "nginx"


@pytest.mark.parametrize(
    ("given", "name", "deployment"),
    [("nginx", "nginx", False), ("svc/nginx", "nginx", False), ("service/nginx", "nginx", False),
     ("deploy/nginx", "nginx", True), ("deployment/nginx", "nginx", True)],
)  # fmt: skip
def test_exchange_takes_kt_connects_target_forms(given: str, name: str, deployment: bool) -> None:
    ctx = cli.commands["exchange"].make_context("exchange", [given, "--expose", "3001:80"])
    target = ctx.params["target"]
    assert (target.name, target.deployment) == (name, deployment)


def test_clean_threshold_in_minutes_is_kt_connects_threshold() -> None:
    ctx = cli.commands["clean"].make_context("clean", ["--thresholdInMinus", "5"])
    assert ctx.params["threshold_minutes"] == 5
    assert "--thresholdInMinus" not in run("clean", "--help").output
