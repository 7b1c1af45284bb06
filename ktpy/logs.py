"""Structured logs with context: ``session=ab12cd34 pod=nginx-kt-exchange-xwswv conn=7``.

Console output for people, ``--log-format json`` for machines (one JSON object
per line). Both go to stderr so stdout stays free for command results such as
``ktpy status -o json``. Records from libraries that use the standard logging
module (paramiko, kubernetes) pass through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

Logger = structlog.stdlib.BoundLogger


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


# Libraries that are chatty at INFO; they only speak up with --debug.
_QUIET_LIBRARIES = ("paramiko", "kubernetes", "urllib3", "websocket")


def _shared_processors(context: Mapping[str, str]) -> list[Processor]:
    def add_context(_logger: Any, _name: str, event: EventDict) -> EventDict:
        for key, value in context.items():
            event.setdefault(key, value)
        return event

    return [
        add_context,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _one_line_exception(sio: TextIO, exc_info: Any) -> None:
    """Without --debug an exception in a log line is its type and message, not a
    traceback with every local variable."""
    _, exc, _ = exc_info
    sio.write(f" ({type(exc).__name__}: {exc})")


def _renderer(log_format: LogFormat, stream: TextIO, debug: bool) -> Processor:
    if log_format is LogFormat.JSON:
        return structlog.processors.JSONRenderer(sort_keys=False)
    colors = hasattr(stream, "isatty") and stream.isatty()
    formatter = structlog.dev.plain_traceback if debug else _one_line_exception
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)


def configure(
    log_format: LogFormat = LogFormat.CONSOLE,
    *,
    debug: bool = False,
    stream: TextIO | None = None,
    context: Mapping[str, str] | None = None,
) -> None:
    """Set up structlog and route the standard logging module through it.

    context: fields every event of this process carries (a helper process's
    session id; threads do not inherit contextvars).

    Safe to call more than once (tests and a re-entered CLI do): handlers are
    replaced, not added.
    """
    out = stream if stream is not None else sys.stderr
    level = logging.DEBUG if debug else logging.INFO
    shared = _shared_processors(dict(context or {}))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info
            if log_format is LogFormat.JSON
            else structlog.processors.StackInfoRenderer(),
            _renderer(log_format, out, debug),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    # urllib3 warns of each retry of a refused connection; ktpy's own error says it once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.DEBUG if debug else logging.ERROR)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "ktpy", **context: Any) -> Logger:
    """A logger for ``name`` carrying ``context`` on every line."""
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger


def session_logger(
    session: str,
    *,
    pod: str | None = None,
    name: str = "ktpy.session",
    **context: Any,
) -> Logger:
    """A logger bound to a session (and its pod, once known)."""
    bound: dict[str, Any] = {"session": session}
    if pod is not None:
        bound["pod"] = pod
    bound.update(context)
    return get_logger(name, **bound)
