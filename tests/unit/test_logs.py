import io
import json
import logging
from collections.abc import Iterator

import pytest

from ktpy import logs


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


def test_console_lines_carry_the_bound_context() -> None:
    out = io.StringIO()
    logs.configure(logs.LogFormat.CONSOLE, stream=out)
    logs.session_logger("ab12cd34", pod="nginx-kt-exchange-xwswv").info("forward open", conn=7)
    line = out.getvalue()
    assert "forward open" in line
    for part in ("session=ab12cd34", "pod=nginx-kt-exchange-xwswv", "conn=7"):
        assert part in line


def test_json_lines_parse_and_include_library_records() -> None:
    out = io.StringIO()
    logs.configure(logs.LogFormat.JSON, stream=out)
    logs.get_logger("ktpy.x", session="s1").warning("hello")
    logging.getLogger("some.library").warning("from stdlib %s", "logging")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0]["event"] == "hello"
    assert records[0]["session"] == "s1"
    assert records[0]["level"] == "warning"
    assert records[0]["timestamp"].endswith("Z")
    assert records[1]["event"] == "from stdlib logging"
    assert records[1]["logger"] == "some.library"


def test_debug_lines_only_with_debug() -> None:
    out = io.StringIO()
    logs.configure(logs.LogFormat.JSON, stream=out)
    logs.get_logger().debug("hidden")
    assert out.getvalue() == ""
    logs.configure(logs.LogFormat.JSON, debug=True, stream=out)
    logs.get_logger().debug("shown")
    assert json.loads(out.getvalue())["event"] == "shown"


def test_chatty_libraries_are_quiet_without_debug() -> None:
    out = io.StringIO()
    logs.configure(logs.LogFormat.JSON, stream=out)
    logging.getLogger("paramiko.transport").info("kex details")
    assert out.getvalue() == ""


def test_configure_twice_does_not_duplicate_lines() -> None:
    out = io.StringIO()
    logs.configure(logs.LogFormat.JSON, stream=out)
    logs.configure(logs.LogFormat.JSON, stream=out)
    logs.get_logger().info("once")
    assert len(out.getvalue().splitlines()) == 1
