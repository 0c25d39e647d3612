"""Structured logs: the record of a check, the JSON-lines writer, and reading logs back.

:mod:`.records` builds one strict-JSON record per check (the schema is in ``schemas/``);
:mod:`.writer` is the built-in plugin that writes records through a private structlog logger;
:mod:`.reader` reads log files back (streaming, every record validated by :mod:`.validate`
against the schema) into records, a summary and a DataFrame (what ``gradguard report``
prints); :mod:`.plot` draws the differences over a run; :mod:`.paths` says what a log path
may be (regular files only, opened without blocking).

>>> from gradguard.logs import load, summarize, format_summary
>>> print(format_summary(summarize(load("gradcheck.jsonl"))))  # doctest: +SKIP
"""

from __future__ import annotations

from gradguard.logs.reader import (
    LogRecords,
    RunSummary,
    Summary,
    TensorSummary,
    TestSummary,
    format_summary,
    iter_records,
    load,
    summarize,
    summarize_files,
)

__all__ = [
    "LogRecords",
    "RunSummary",
    "Summary",
    "TensorSummary",
    "TestSummary",
    "format_summary",
    "iter_records",
    "load",
    "summarize",
    "summarize_files",
]
