"""Durations as people type and read them: ``30s``, ``3m``, ``1h30m``, ``250ms``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
# Beyond any sensible timeout, and far below what timedelta and the clocks can hold.
MAX_DAYS = 365
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def _shown(text: str, limit: int = 32) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``, ``3m``, ``1h30m``, ``1.5s`` or a bare number of seconds.

    Raises ValueError with a message fit to show the user.
    """
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("empty duration")
    try:
        if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
            total = timedelta(seconds=float(cleaned))
        else:
            total = timedelta()
            position = 0
            for match in _PART.finditer(cleaned):
                if match.start() != position:
                    break
                total += float(match.group(1)) * _UNITS[match.group(2)]
                position = match.end()
            if position != len(cleaned) or position == 0:
                raise ValueError(
                    f"{_shown(text)} is not a duration (examples: 30s, 3m, 1h30m, 500ms)"
                )
    except OverflowError:
        raise ValueError(
            f"{_shown(text)} is too long a duration (at most {MAX_DAYS} days)"
        ) from None
    if total > timedelta(days=MAX_DAYS):
        raise ValueError(f"{_shown(text)} is too long a duration (at most {MAX_DAYS} days)")
    return total


def format_duration(value: timedelta) -> str:
    """Round to the two largest units for display: ``45s``, ``3m10s``, ``2h5m``, ``3d4h``."""
    seconds = int(value.total_seconds())
    if seconds < 0:
        return "-" + format_duration(-value)
    if seconds < 1 and value.total_seconds() > 0:
        return f"{int(value.total_seconds() * 1000)}ms"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = parts[:2]
    if len(shown) == 2 and shown[1][0] == 0:
        shown = shown[:1]
    return "".join(f"{amount}{unit}" for amount, unit in shown)
