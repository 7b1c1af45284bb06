import ipaddress
from datetime import timedelta

import click
import pytest
from click.testing import CliRunner

from ktpy import params
from ktpy.params import (
    CIDR,
    DURATION,
    EXPOSE,
    NAME,
    PORT,
    VERSION_MARK,
    DurationType,
    ForwardTarget,
    PortMapping,
    VersionMark,
    forward_targets_callback,
    is_dns1123_label,
    is_port_name,
    parse_byte_size,
    parse_cidr,
    parse_expose,
    parse_forward_targets,
    parse_version_mark,
)


class TestExpose:
    def test_pairs_and_bare_port(self) -> None:
        assert parse_expose("3001:80,8080") == (PortMapping(3001, 80), PortMapping(8080, 8080))

    def test_remote_may_be_a_port_name(self) -> None:
        assert parse_expose("3001:http,9000:grpc-web") == (
            PortMapping(3001, "http"),
            PortMapping(9000, "grpc-web"),
        )

    def test_spaces_around_entries_are_tolerated(self) -> None:
        assert parse_expose(" 1:2 , 3 ") == (PortMapping(1, 2), PortMapping(3, 3))

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("0:80", "out of range"),
            ("3001:65536", "out of range"),
            ("http:80", "not a port number"),
            ("3001:", "not LOCAL:REMOTE"),
            (":80", "not LOCAL:REMOTE"),
            ("3001:80,", "empty entry"),
            ("3001:Http", "neither a port number nor a port name"),
            ("3001:has--dash", "neither"),
            ("3001:thisnameistoolong", "neither"),
            ("3001:80,3001:81", "local port 3001 appears twice"),
            ("3001:80,3002:80", "remote port 80 appears twice"),
            ("80,80", "appears twice"),
            ("3001:http,3002:http", "remote port http appears twice"),
            ("1:2:3", "neither"),
        ],
    )
    def test_refused(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_expose(text)

    def test_str_is_the_input_form(self) -> None:
        assert [str(m) for m in parse_expose("3001:http,8080")] == ["3001:http", "8080:8080"]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("http", True),
        ("h2c", True),
        ("grpc-web", True),
        ("123", False),
        ("-http", False),
        ("http-", False),
        ("a--b", False),
        ("HTTP", False),
        ("abcdefghijklmnop", False),
        ("abcdefghijklmno", True),
    ],
)
def test_is_port_name(name: str, valid: bool) -> None:
    assert is_port_name(name) is valid


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("default", True),
        ("a", True),
        ("1abc", True),
        ("a-b", True),
        ("-a", False),
        ("a-", False),
        ("A", False),
        ("a.b", False),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
    ],
)
def test_is_dns1123_label(name: str, valid: bool) -> None:
    assert is_dns1123_label(name) is valid


class TestVersionMark:
    def test_value_only_uses_the_default_key(self) -> None:
        assert parse_version_mark("blue") == VersionMark("version", "blue")

    def test_key_and_value(self) -> None:
        assert parse_version_mark("x-canary:v2") == VersionMark("x-canary", "v2")

    def test_key_only_means_generate_the_value(self) -> None:
        assert parse_version_mark("user_a:") == VersionMark("user_a", None)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "empty"),
            ("1key:v", "must match"),
            ("Key:v", "must match"),
            (":v", "must match"),
            ("k:V1", "lowercase"),
            ("k:-v", "lowercase"),
            ("k:" + "v" * 21, "at most 20"),
            ("k:a:b", "lowercase"),
        ],
    )
    def test_refused(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_version_mark(text)


class TestCidr:
    def test_networks(self) -> None:
        assert parse_cidr("10.96.0.0/12") == ipaddress.ip_network("10.96.0.0/12")
        assert parse_cidr("fd00::/108") == ipaddress.ip_network("fd00::/108")

    def test_single_address_is_a_host_route(self) -> None:
        assert parse_cidr("10.1.2.3") == ipaddress.ip_network("10.1.2.3/32")

    def test_host_bits_set_suggests_the_network(self) -> None:
        with pytest.raises(ValueError, match=r"did you mean 10\.0\.0\.0/8"):
            parse_cidr("10.1.2.3/8")

    @pytest.mark.parametrize("text", ["", "10.0.0.0/33", "banana", "10.0.0/8x"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(ValueError, match="not a CIDR"):
            parse_cidr(text)


@click.command()
@click.option("--expose", type=EXPOSE)
@click.option("--mark", type=VERSION_MARK)
@click.option("--cidr", type=CIDR, multiple=True)
@click.option("--every", type=DURATION)
@click.option("--short", type=DurationType(minimum=timedelta(seconds=1)))
@click.option("--port", type=PORT)
@click.option("--name", type=NAME)
def probe(**values: object) -> None:
    click.echo(repr(values))


class TestParamTypesAtTheEdge:
    def run(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(probe, list(args))
        return result.exit_code, result.output

    def test_good_values_arrive_parsed(self) -> None:
        code, out = self.run(
            "--expose",
            "3001:80",
            "--mark",
            "k:v",
            "--cidr",
            "10.0.0.0/8",
            "--every",
            "3m",
            "--port",
            "2223",
        )
        assert code == 0, out
        assert "PortMapping(local=3001, remote=80)" in out
        assert "VersionMark(key='k', value='v')" in out
        assert "IPv4Network('10.0.0.0/8')" in out
        assert "datetime.timedelta(seconds=180)" in out
        assert "'port': 2223" in out

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--expose", "3001:80,3001:81"], "local port 3001 appears twice"),
            (["--mark", "1:x"], "must match"),
            (["--cidr", "10.0.0.1/8"], "did you mean"),
            (["--every", "soon"], "not a duration"),
            (["--short", "500ms"], "must be longer than 1s"),
            (["--every", "0s"], "must be longer than 0s"),
            (["--port", "0"], "out of range"),
            (["--port", "x"], "not a port number"),
            (["--name", "Dev"], "not a valid name"),
            (["--name", "a" * 64], "not a valid name"),
        ],
    )
    def test_bad_values_are_usage_errors(self, args: list[str], message: str) -> None:
        code, out = self.run(*args)
        assert code == 2
        assert "Invalid value" in out
        assert message in out


class TestForwardTargets:
    def test_services_with_and_without_ports(self) -> None:
        assert parse_forward_targets(["web", "8080:http", "db.data", "5432", "cache", ":6379"]) == (
            ForwardTarget("web", None, 8080, "http"),
            ForwardTarget("db", "data", 5432, None),
            ForwardTarget("cache", None, None, 6379),
        )
        assert parse_forward_targets(["web", "api"]) == (ForwardTarget("web"), ForwardTarget("api"))

    @pytest.mark.parametrize(
        ("tokens", "message"),
        [
            (["8080", "web"], "before any Service"),
            (["web", "8080", "9090"], "already has its ports"),
            (["web", "8080:"], "nothing after ':'"),
            (["web", "70000"], "out of range"),
            (["web", "80:Http"], "neither a port number nor a port name"),
            (["Web"], "not a Service name"),
            (["web.a.b"], "not a Service name"),
            ([], "at least one Service"),
        ],
    )
    def test_refusals(self, tokens: list[str], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_forward_targets(tokens)

    def test_click_reports_a_usage_error(self) -> None:
        @click.command()
        @click.argument("targets", nargs=-1, callback=forward_targets_callback)
        def cmd(targets: tuple[ForwardTarget, ...]) -> None:
            click.echo(repr(targets))

        result = CliRunner().invoke(cmd, ["8080"])
        assert result.exit_code == 2
        assert "before any Service" in result.output
        assert "ForwardTarget(service='web'" in CliRunner().invoke(cmd, ["web"]).output


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("ghcr.io/ktpy/shadow:0.1.0", True),
        ("localhost:5000/team/shadow", True),
        ("shadow@sha256:" + "0" * 64, True),
        ("Ghcr.io/KTPY/shadow", False),
        ("shadow;rm -rf /", False),
        ("shadow:", False),
        ("", False),
        ("a" * 600, False),
    ],
)
def test_parse_image(text: str, valid: bool) -> None:
    from ktpy.params import parse_image

    if valid:
        assert parse_image(text) == text
    else:
        with pytest.raises(ValueError, match="not an image reference"):
            parse_image(text)


def test_huge_values_are_cut_in_the_message() -> None:
    from ktpy.params import bounded_number, parse_port_number

    for parse in (parse_port_number, bounded_number(1280, 65535)):
        with pytest.raises(ValueError, match="characters") as caught:
            parse("9" * 500)
        assert len(str(caught.value)) < 120


def test_two_forwards_on_one_explicit_local_port_are_refused() -> None:
    from ktpy.params import parse_forward_targets

    with pytest.raises(ValueError, match="local port 8080 is given to two forwards"):
        parse_forward_targets(["a", "8080", "b", "8080:81"])
    assert len(parse_forward_targets(["a", "8080", "b", "8081"])) == 2


class TestServiceTarget:
    @pytest.mark.parametrize("text", ["nginx", "svc/nginx", "service/nginx", "services/nginx"])
    def test_service_forms(self, text: str) -> None:
        assert params.parse_service_target(text) == params.ServiceTarget("nginx")

    @pytest.mark.parametrize("text", ["deploy/web", "deployment/web", "deployments/web"])
    def test_deployment_forms_where_allowed(self, text: str) -> None:
        assert params.parse_service_target(text, deployments=True) == params.ServiceTarget(
            "web", deployment=True
        )
        with pytest.raises(ValueError, match=r"expected NAME, svc/NAME$"):
            params.parse_service_target(text)

    @pytest.mark.parametrize(
        ("text", "message"),
        [("pod/web", "expected NAME, svc/NAME or deploy/NAME"), ("svc/Web", "not a valid name")],
    )
    def test_bad_targets(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            params.parse_service_target(text, deployments=True)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("64MiB", 64 << 20), ("512KiB", 512 << 10), ("1G", 1 << 30),
     (" 8 mib ", 8 << 20)],
)  # fmt: skip
def test_byte_sizes_are_binary(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.5MiB", "8MB", "-1"])
def test_a_size_without_a_number_or_with_an_unknown_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size(text)
