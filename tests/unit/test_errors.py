import inspect
import io
import signal
from datetime import timedelta

import click
import pytest

from ktpy import errors
from ktpy.errors import (
    IMAGE_DOC,
    AlreadyExchanged,
    Forbidden,
    HungUp,
    ImageUnavailable,
    Interrupted,
    KtpyError,
    PortNotInService,
    ServiceNotFound,
    Terminated,
    UsageProblem,
)


def all_error_classes() -> list[type[KtpyError]]:
    return [
        cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, KtpyError)
    ]


def test_every_error_is_a_click_exception() -> None:
    classes = all_error_classes()
    assert len(classes) > 20
    assert all(issubclass(cls, click.ClickException) for cls in classes)


def test_exit_codes_are_distinct_per_class() -> None:
    codes: dict[int, str] = {}
    for cls in all_error_classes():
        assert cls.exit_code not in codes, f"{cls.__name__} reuses {codes.get(cls.exit_code)}"
        codes[cls.exit_code] = cls.__name__
    assert codes[2] == "UsageProblem"
    assert codes[130] == "Interrupted"


def test_every_class_except_interrupts_has_a_one_line_hint() -> None:
    for cls in all_error_classes():
        if issubclass(cls, Interrupted) or cls is ImageUnavailable:
            continue
        assert cls.default_hint, cls.__name__
        assert "\n" not in cls.default_hint


def test_show_prints_error_then_hint() -> None:
    out = io.StringIO()
    UsageProblem("bad thing").show(out)
    assert out.getvalue() == "Error: bad thing\nHint: See 'ktpy --help' or 'ktpy COMMAND --help'.\n"


def test_an_explicit_hint_replaces_the_default() -> None:
    out = io.StringIO()
    KtpyError("boom", hint="do this").show(out)
    assert out.getvalue().splitlines() == ["Error: boom", "Hint: do this"]


def test_no_hint_line_when_hint_is_empty() -> None:
    out = io.StringIO()
    Interrupted().show(out)
    assert out.getvalue() == "Error: stopped by SIGINT\n"


def test_already_exchanged_names_owner_and_age() -> None:
    error = AlreadyExchanged("nginx", "alice@laptop", timedelta(minutes=4, seconds=2))
    assert str(error) == "service 'nginx' is already exchanged by alice@laptop (since 4m2s ago)"
    assert error.exit_code == 20


def test_image_unavailable_for_the_default_image_says_how_to_build_it() -> None:
    error = ImageUnavailable("ghcr.io/ktpy/shadow:0.1.0", "ErrImagePull")
    assert "ghcr.io/ktpy/shadow:0.1.0" in str(error)
    assert "shadow-image/build.sh" in error.hint
    assert "--image" in error.hint
    assert IMAGE_DOC in error.hint
    other = ImageUnavailable("example.org/mine:1", "ImagePullBackOff")
    assert "build.sh" not in other.hint
    assert IMAGE_DOC in other.hint


def test_messages_name_what_went_wrong() -> None:
    assert str(ServiceNotFound("web", "dev")) == "service 'web' not found in namespace 'dev'"
    assert "it has: 80/http" in str(PortNotInService("web", 81, ["80/http"]))
    forbidden = Forbidden("create", "pods", "dev")
    assert str(forbidden) == "not allowed to create pods in namespace 'dev'"


@pytest.mark.parametrize(
    ("signum", "cls", "code"),
    [
        (signal.SIGINT, Interrupted, 130),
        (signal.SIGTERM, Terminated, 143),
        (signal.SIGHUP, HungUp, 129),
    ],
)
def test_signals_map_to_shell_exit_codes(signum: int, cls: type[Interrupted], code: int) -> None:
    error = Interrupted.for_signal(signum)
    assert type(error) is cls
    assert error.exit_code == code
    assert signal.Signals(signum).name in str(error)


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="no exit status"):
        Interrupted.for_signal(signal.SIGUSR1)
