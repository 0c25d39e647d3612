"""The built-in reporter plugin: one structlog event per check.

Events go through a private structlog logger built with ``structlog.wrap_logger`` and its
own processors, so the application's structlog configuration is never read or changed
(gradguard never calls ``structlog.configure``). When a check asked for a ``log_file``, the
event is appended to it as one strict-JSON line, flushed at once. When the application has
configured structlog itself, the same event also goes to its ``gradguard`` logger.

Logging never breaks the caller: a file that cannot be written (a directory, no permission,
a full disk, a FIFO or a device: only regular files are logs) warns once and is skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import MutableMapping
from typing import Any

import structlog

from gradguard.context import CheckContext
from gradguard.errors import GradGuardLogWarning
from gradguard.logs.paths import open_regular
from gradguard.logs.records import EVENT, check_record, lifecycle_record
from gradguard.plugins import hookimpl
from gradguard.results import CheckReport

__all__ = [
    "JsonLinesFile",
    "emit",
    "gradguard_check_completed",
    "gradguard_lifecycle_event",
]


def _dumps(event_dict: Any, **kw: Any) -> str:
    return json.dumps(event_dict, allow_nan=False, separators=(",", ":"), **kw)


class JsonLinesFile:
    """A structlog "logger" that appends each rendered event as a line to a file.

    The file is opened, appended and closed per record, so a crash leaves at most the line
    being written; an ``OSError`` (a directory, no permission, a full disk) warns once per
    path and the record is dropped. The path is opened without blocking and must be a
    regular file: a FIFO with no reader would otherwise hang the check (and training).
    """

    _warned: set[str] = set()  # noqa: RUF012  # shared on purpose: warn once per path per process

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def msg(self, message: str) -> None:
        try:
            with open_regular(self.path, append=True) as handle:
                handle.write((message + "\n").encode("utf-8"))
                handle.flush()
        except OSError as exc:
            if self.path not in self._warned:
                self._warned.add(self.path)
                warnings.warn(
                    f"gradguard cannot write its log to {self.path!r} ({exc}); checks go on "
                    "without it",
                    GradGuardLogWarning,
                    stacklevel=2,
                )

    info = warning = error = debug = msg


def _leading_keys(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """Put ``schema`` and ``event`` first, so a person reading the file sees them first."""
    head: dict[str, Any] = {
        key: event_dict.pop(key) for key in ("schema", "event") if key in event_dict
    }
    return {**head, **event_dict}


def _file_logger(path: str) -> Any:
    return structlog.wrap_logger(
        JsonLinesFile(path),
        processors=[_leading_keys, structlog.processors.JSONRenderer(serializer=_dumps)],
        wrapper_class=structlog.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def emit(record: dict[str, Any], log_file: str | None) -> None:
    """Send one record to the log file (if any) and to the application's structlog."""
    fields = {k: v for k, v in record.items() if k != "event"}
    if log_file is not None:
        _file_logger(log_file).info(record.get("event", EVENT), **fields)
    if structlog.is_configured():
        structlog.get_logger("gradguard").info(record.get("event", EVENT), **fields)


@hookimpl(trylast=True)
def gradguard_check_completed(report: CheckReport, context: CheckContext) -> None:
    """Write the check's record to ``context.log_file`` and the application's logger."""
    emit(check_record(report, context), context.log_file)


@hookimpl(trylast=True)
def gradguard_lifecycle_event(event: str, details: dict[str, Any], context: CheckContext) -> None:
    """Write a lifecycle record (a guard disabling itself, ...) like a check's."""
    emit(lifecycle_record(event, details, context), context.log_file)
