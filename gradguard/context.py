"""Where a check ran: what a reporter needs besides the report itself."""

from __future__ import annotations

import attrs

__all__ = ["CheckContext"]


@attrs.frozen
class CheckContext:
    """The circumstances of one check, passed to ``gradguard_check_completed``.

    Attributes:
        source: The front door that ran it (``"check"``, ``"guard"``, ``"keras"``, ``"pytest"``).
        step: The training step, when a training-loop front door ran it.
        run_id: An id shared by every check of one run, when there is a run.
        log_file: The JSON-lines file the caller asked the records to go to, or ``None``.
        label: What made the check, in the front door's terms (a test's node id), or ``None``.
    """

    source: str = "check"
    step: int | None = None
    run_id: str | None = None
    log_file: str | None = None
    label: str | None = None
