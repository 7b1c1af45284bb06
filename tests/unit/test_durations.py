from datetime import timedelta

import pytest

from ktpy.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("3m", timedelta(minutes=3)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        ("2d", timedelta(days=2)),
        ("45", timedelta(seconds=45)),
        (" 10S ", timedelta(seconds=10)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "s", "3x", "m3", "3m x", "-3s", "3m-2s", "1h 30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=3, seconds=10), "3m10s"),
        (timedelta(minutes=3), "3m"),
        (timedelta(hours=2, minutes=5, seconds=59), "2h5m"),
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(0), "0s"),
        (timedelta(milliseconds=300), "300ms"),
        (timedelta(seconds=-90), "-1m30s"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


def test_format_then_parse_round_trips_whole_units() -> None:
    for seconds in (1, 59, 60, 61, 3599, 3600, 7260):
        value = timedelta(seconds=seconds)
        assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text", ["9" * 400 + "h", "1e400", "366d", "9" * 30])
def test_a_huge_duration_is_refused_in_a_short_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"too long|not a duration") as caught:
        parse_duration(text)
    assert len(str(caught.value)) < 120
