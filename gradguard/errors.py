"""The exceptions gradguard raises.

Every error caused by the caller's input derives from :class:`GradGuardError`, and also from
the built-in exception a Python programmer would expect (``TypeError`` for a wrong kind of
object, ``ValueError`` for a wrong value), so ``except ValueError`` keeps working.
Messages name the tensor, its shape and dtype where one is involved, and say what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradguard.results import CheckReport

__all__ = [
    "AdapterNotFoundError",
    "ConcurrentCheckError",
    "GradGuardError",
    "GradGuardLogWarning",
    "GradientCheckError",
    "GradientCheckWarning",
    "GradientError",
    "InconclusiveCheckError",
    "InvalidParamsError",
    "LogError",
    "LossError",
    "MissingDependencyError",
    "PluginLoadError",
    "SettingsError",
]


class GradGuardError(Exception):
    """Base class of every error gradguard raises on purpose."""


class SettingsError(GradGuardError, ValueError):
    """A check option is out of range or inconsistent (``eps <= 0``, nothing to check, ...)."""


class InvalidParamsError(GradGuardError, TypeError):
    """The parameters cannot be checked: empty, integer or bool arrays, unsupported leaves."""


class AdapterNotFoundError(InvalidParamsError):
    """No registered adapter claimed the params container."""


class LossError(GradGuardError, ValueError):
    """The loss function returned something that is not a finite scalar."""


class GradientError(GradGuardError, ValueError):
    """The analytic gradient is missing, has the wrong structure or shape, or is not finite."""


class MissingDependencyError(GradGuardError, ImportError):
    """An optional dependency is needed for what was asked (matplotlib for plots)."""


class LogError(GradGuardError, OSError):
    """A log file cannot be read at all (missing, a directory, no permission)."""


class PluginLoadError(GradGuardError, RuntimeError):
    """A plugin could not be imported or registered; the message names it."""


class GradientCheckError(GradGuardError, AssertionError):
    """Raised by :meth:`CheckReport.raise_for_failure` when the gradient check failed.

    It carries the report, so a test or a training loop can look at the failing tensors.
    It derives from ``AssertionError`` so that pytest shows it as a failed assertion.
    """

    def __init__(self, message: str, report: CheckReport) -> None:
        super().__init__(message)
        self.report = report


class InconclusiveCheckError(GradientCheckError):
    """Raised by :meth:`CheckReport.raise_for_failure` when the check could not judge a tensor.

    No tensor was found wrong, but at least one could not be judged: the finite differences
    cannot resolve a disagreement of the size the tolerance names. The message says why and
    what to do (a larger step, float64). It is a :class:`GradientCheckError`, so code that
    treats a failed check as a failure treats this one the same way.
    """


class GradientCheckWarning(UserWarning):
    """Issued by a training-loop front door with ``on_failure="warn"`` when a check fails.

    The message is the report's readable table.
    """


class GradGuardLogWarning(RuntimeWarning):
    """A log record could not be written; the check itself went on."""


class ConcurrentCheckError(GradGuardError, RuntimeError):
    """A check was started inside another check of the same tensors, in the same thread."""
