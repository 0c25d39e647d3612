"""The structured record of one check: what goes into a JSON-lines log.

``docs/log-schema.md`` documents every field; :data:`SCHEMA_VERSION` changes whenever a
field changes meaning or disappears (adding a field does not change it).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from gradguard.context import CheckContext
from gradguard.results import CheckReport

__all__ = ["EVENT", "SCHEMA_VERSION", "check_record", "lifecycle_record", "utc_timestamp"]

SCHEMA_VERSION = 1
EVENT = "gradcheck"


def utc_timestamp() -> str:
    """The current time as ISO 8601 in UTC, e.g. ``2026-11-21T21:26:19.123456+00:00``."""
    # Always with microseconds: isoformat() drops a zero fraction, and readers parsing a
    # column of timestamps (pandas) want one format.
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def check_record(report: CheckReport, context: CheckContext) -> dict[str, Any]:
    """One strict-JSON-ready record for a finished check (built-in types only)."""
    body = report.to_dict()
    return {
        "schema": SCHEMA_VERSION,
        "event": EVENT,
        "timestamp": utc_timestamp(),
        "run_id": context.run_id,
        "source": context.source,
        "step": context.step,
        "label": context.label,
        **body,
    }


def lifecycle_record(event: str, details: dict[str, Any], context: CheckContext) -> dict[str, Any]:
    """One record for a front door's change of state (a guard disabling itself, ...)."""
    return {
        "schema": SCHEMA_VERSION,
        "event": event,
        "timestamp": utc_timestamp(),
        "run_id": context.run_id,
        "source": context.source,
        "step": context.step,
        **details,
    }
