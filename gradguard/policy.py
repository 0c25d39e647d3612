"""What a training-loop front door does when a check does not pass: one policy for all of them.

The :class:`~gradguard.Guard`, the Keras ``GradCheckCallback`` and the Lightning
``GradCheckCallback`` take the same ``on_failure`` values, with the same default and the same
meaning (``docs/guard.md`` has the table). A check *does not pass* when a tensor's gradient is
wrong (``FAILED``), when the check could not judge a tensor (``INCONCLUSIVE``: never counted as
passed) or when the loss is nondeterministic; all three go through the policy alike.

- ``"stop"`` (default, as Keras' ``TerminateOnNaN`` stops by default): warn with the report's
  table, saying that training stops, and ask the training to end gracefully
  (``model.stop_training``, ``trainer.should_stop``, ``guard.should_stop``).
- ``"raise"``: raise the report's :class:`~gradguard.GradientCheckError`
  (:class:`~gradguard.InconclusiveCheckError` for an inconclusive check).
- ``"warn"``: warn with the table and keep training.
- ``"log"``: only the log record.

A check that cannot run at all (bad input) raises its :class:`~gradguard.GradGuardError`
whatever the policy says.
"""

from __future__ import annotations

import warnings
from typing import Literal

from gradguard.errors import GradientCheckWarning, SettingsError
from gradguard.results import CheckReport, Status

__all__ = ["DEFAULT_ON_FAILURE", "ON_FAILURE", "OnFailure", "apply_policy", "validate_on_failure"]

OnFailure = Literal["stop", "raise", "warn", "log"]
ON_FAILURE: tuple[OnFailure, ...] = ("stop", "raise", "warn", "log")
DEFAULT_ON_FAILURE: OnFailure = "stop"


def validate_on_failure(value: object) -> OnFailure:
    """``value`` if it is one of :data:`ON_FAILURE`.

    Raises:
        SettingsError: it is not.
    """
    if not isinstance(value, str) or value not in ON_FAILURE:
        raise SettingsError(
            f"on_failure must be one of {', '.join(map(repr, ON_FAILURE))}, got {value!r}"
        )
    return value


def _verdict(report: CheckReport) -> str:
    if report.status is Status.INCONCLUSIVE:
        return "could not judge " + ", ".join(report.inconclusive)
    if report.status is Status.NONDETERMINISTIC:
        return "found the loss nondeterministic"
    return "FAILED on " + ", ".join(report.failed)


def failure_message(report: CheckReport, on_failure: OnFailure, step: int | None) -> str:
    """The warning a front door gives for a check that did not pass: what, where, what next."""
    where = "" if step is None else f" at step {step}"
    if on_failure == "stop":
        what = (
            f"gradguard stopped training{where}: the gradient check {_verdict(report)} "
            "(on_failure='stop'; 'warn' keeps training, 'raise' makes it an error)"
        )
    else:
        what = f"gradguard: the gradient check{where} {_verdict(report)}; training goes on"
    return f"{what}\n{report}"


def apply_policy(
    report: CheckReport, on_failure: OnFailure, step: int | None, *, stacklevel: int = 2
) -> bool:
    """Act on a report as ``on_failure`` says; return whether training should stop.

    A passing report does nothing and returns ``False``.

    Raises:
        GradientCheckError: the check did not pass and ``on_failure="raise"``
            (:class:`~gradguard.InconclusiveCheckError` when it could not judge).
    """
    if report.passed:
        return False
    if on_failure == "raise":
        report.raise_for_failure()
    if on_failure in ("stop", "warn"):
        warnings.warn(
            failure_message(report, on_failure, step),
            GradientCheckWarning,
            stacklevel=stacklevel + 1,
        )
    return on_failure == "stop"
