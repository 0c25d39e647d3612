"""What a check returns: a verdict per tensor and overall, printable and JSON-ready."""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from gradguard.errors import GradientCheckError, InconclusiveCheckError

__all__ = ["CheckReport", "ParamReport", "Status", "overall_status"]


class Status(enum.StrEnum):
    """How a tensor (or a whole check) ended.

    PASSED means the check could see, and it agreed:

    - ``PASS``: judged, and the analytic gradient agrees with the finite differences.
    - ``ZERO``: both sides are zero to within the finite-difference noise, judged against the
      model's gradient scale (a bias that a normalization cancels, an unused parameter); the
      gradient agrees, and the report says so instead of printing noise/noise as a difference.
    - ``NON_DIFFERENTIABLE``: every probe straddled a kink; excluded from the verdict.
    - ``FAIL``: the analytic gradient is wrong.
    - ``INCONCLUSIVE``: the finite differences cannot resolve a disagreement of the size the
      tolerance names (the step is unusable for the dtype, or the measured noise is too
      large); never counted as passed.
    - ``NONDETERMINISTIC``: the loss gives different values at the same point, so no
      gradient verdict can be trusted.

    ``PASS``, ``ZERO`` and ``NON_DIFFERENTIABLE`` count as passed; the others fail a check.
    """

    PASS = "pass"
    ZERO = "zero"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NON_DIFFERENTIABLE = "non-differentiable"
    NONDETERMINISTIC = "nondeterministic"

    @property
    def passed(self) -> bool:
        """Whether a tensor (or a check) that ended this way counts as passed."""
        return self in _PASSING


_PASSING = frozenset({Status.PASS, Status.ZERO, Status.NON_DIFFERENTIABLE})


def _json_float(value: float | None) -> float | None:
    """A float that strict JSON can hold (NaN and infinities become null)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@attrs.frozen
class ParamReport:
    """The verdict on one tensor.

    Attributes:
        name: The tensor's name.
        shape: Its shape.
        dtype: Its dtype, as a string.
        status: How it ended (see :class:`Status`).
        difference: The seed's relative difference over this tensor's judged probes
            (sampled coordinates and directional derivatives; probes that straddle a kink
            are left out).
        tolerance: The tolerance this tensor was judged against.
        coordinates: How many of its elements were probed one by one.
        directions: How many random directions were probed over the whole tensor.
        kinks: How many probes straddled a non-differentiable point and were left out.
        worst_index: The element with the largest disagreement (a coordinate probe, or the
            element a failing direction was narrowed down to), or ``None``.
        worst_analytic: The analytic partial derivative at ``worst_index``.
        worst_numeric: The central-difference estimate at ``worst_index``.
        worst_owners: For a sharded model, the ranks whose shards hold ``worst_index`` (one
            rank, or several for a replicated element); ``None`` otherwise.
        hint: One line saying what the numbers suggest, or ``""``.
        judged_by: How the verdict was reached: ``"screen"`` (jointly with the other
            tensors, no probe of its own beyond its coordinates), ``"probed"`` (its own
            directions and coordinates) or ``"bisected"`` (probed, and a failing direction
            narrowed down to an element).
        evaluations: Loss evaluations made with this tensor perturbed on its own
            (coordinates, its own directions, second looks, bisection); joint probes are
            shared and counted in the check's ``notes["screen_evaluations"]``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    status: Status
    difference: float
    tolerance: float
    coordinates: int
    directions: int
    kinks: int = 0
    worst_index: tuple[int, ...] | None = None
    worst_analytic: float | None = None
    worst_numeric: float | None = None
    hint: str = ""
    judged_by: str = "probed"
    evaluations: int = 0
    worst_owners: tuple[int, ...] | None = None

    @property
    def passed(self) -> bool:
        """Whether this tensor does not count against the check."""
        return self.status.passed

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (built-in types only, no NaN or infinity).

        ``worst_owners`` appears only for a sharded model's tensors.
        """
        record = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "status": self.status.value,
            "passed": self.passed,
            "difference": _json_float(self.difference),
            "tolerance": _json_float(self.tolerance),
            "coordinates": self.coordinates,
            "directions": self.directions,
            "kinks": self.kinks,
            "worst_index": None if self.worst_index is None else list(self.worst_index),
            "worst_analytic": _json_float(self.worst_analytic),
            "worst_numeric": _json_float(self.worst_numeric),
            "hint": self.hint,
            "judged_by": self.judged_by,
            "evaluations": self.evaluations,
        }
        if self.worst_owners is not None:
            record["worst_owners"] = list(self.worst_owners)
        return record


@attrs.frozen
class CheckReport:
    """The result of one gradient check.

    Attributes:
        passed: ``True`` when no tensor failed and the loss was deterministic.
        status: The overall :class:`Status`.
        difference: The seed's relative difference over every probe of the check. In seed
            mode (every coordinate, ``eps=1e-7``) it is the seed recipe's number.
        tolerance: The tolerance the check was judged against (the loosest, if tensors of
            different dtypes were judged differently).
        eps: The step: absolute when given by the caller, otherwise the relative step
            (a coordinate x is perturbed by ``eps * max(1, |x|)``).
        eps_relative: Whether ``eps`` is relative to the coordinates' scale.
        params: One :class:`ParamReport` per tensor, in the container's order.
        evaluations: How many times the loss was evaluated.
        gradient_calls: How many times the analytic gradient was computed.
        seed: The seed of the private generator that drew coordinates and directions.
        duration_s: Wall-clock time of the check.
        adapter: The adapter that read the params (``"numpy"``, ...).
        dtype: The dtype the loss was computed in.
        sample: The coordinate sampling asked for (``None`` for the default, an int, ``"all"``).
        loss: The loss value at the unperturbed parameters.
        hint: A check-level hint (nondeterminism), or ``""``.
        notes: Facts the adapter recorded about how the check ran (a float64 shadow
            evaluation, TF32 switched off, ...), JSON values only.
        coverage: For checks made by a training-loop front door: the fraction of all
            parameter elements probed one by one so far in the run (``None`` otherwise).
    """

    passed: bool
    status: Status
    difference: float
    tolerance: float
    eps: float
    eps_relative: bool
    params: tuple[ParamReport, ...]
    evaluations: int
    gradient_calls: int
    seed: int
    duration_s: float
    adapter: str
    dtype: str
    sample: int | str | None
    loss: float
    hint: str = ""
    notes: dict[str, str | int | float | bool | None] = attrs.field(factory=dict)
    coverage: float | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the tensors whose gradient is wrong."""
        return tuple(p.name for p in self.params if p.status is Status.FAIL)

    @property
    def inconclusive(self) -> tuple[str, ...]:
        """Names of the tensors the check could not judge (see :attr:`Status.INCONCLUSIVE`)."""
        return tuple(p.name for p in self.params if p.status is Status.INCONCLUSIVE)

    def __getitem__(self, name: str) -> ParamReport:
        """The report of the tensor called ``name``."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no tensor named {name!r}; tensors: {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        """The checked tensors' names, in order."""
        return tuple(p.name for p in self.params)

    def raise_for_failure(self) -> CheckReport:
        """Raise :class:`GradientCheckError` (with this report attached) unless the check passed.

        A check that could not judge some tensor and found no wrong one raises the subclass
        :class:`InconclusiveCheckError`: an inconclusive check is never a pass.

        Returns:
            The report itself, so calls can be chained.
        """
        if self.status is Status.INCONCLUSIVE:
            raise InconclusiveCheckError(str(self), self)
        if not self.passed:
            raise GradientCheckError(str(self), self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (built-in types only, no NaN or infinity)."""
        return {
            "passed": self.passed,
            "status": self.status.value,
            "difference": _json_float(self.difference),
            "tolerance": _json_float(self.tolerance),
            "eps": _json_float(self.eps),
            "eps_relative": self.eps_relative,
            "failed": list(self.failed),
            "params": [p.to_dict() for p in self.params],
            "evaluations": self.evaluations,
            "gradient_calls": self.gradient_calls,
            "seed": self.seed,
            "duration_s": _json_float(self.duration_s),
            "adapter": self.adapter,
            "dtype": self.dtype,
            "sample": self.sample,
            "loss": _json_float(self.loss),
            "hint": self.hint,
            "coverage": _json_float(self.coverage),
            "notes": {
                k: _json_float(v) if isinstance(v, float) else v for k, v in self.notes.items()
            },
        }

    def __str__(self) -> str:
        return format_report(self)


def overall_status(params: tuple[ParamReport, ...] | list[ParamReport]) -> Status:
    """A check's status from its tensors': a wrong tensor fails it, an unjudged one leaves it
    inconclusive, and otherwise it passed. Non-differentiable tensors are left out, but a check
    that judged none of its tensors (every one straddled kinks) could not see: inconclusive."""
    statuses = {p.status for p in params}
    if Status.FAIL in statuses:
        return Status.FAIL
    if Status.INCONCLUSIVE in statuses or statuses == {Status.NON_DIFFERENTIABLE}:
        return Status.INCONCLUSIVE
    return Status.PASS


def _fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if value != 0.0 else "0"


def _fmt_index(index: tuple[int, ...] | None) -> str:
    if index is None:
        return "-"
    if not index:
        return "()"  # the element of a scalar
    return "[" + ", ".join(str(i) for i in index) + "]"


def _fmt_owners(owners: tuple[int, ...] | None) -> str:
    """`` on rank 1`` / `` on ranks 0,1`` after a sharded model's worst element; else nothing."""
    if owners is None:
        return ""
    if len(owners) == 1:
        return f" on rank {owners[0]}"
    return " on ranks " + ",".join(str(r) for r in owners)


def format_report(report: CheckReport) -> str:
    """The readable per-tensor table that ``str(report)`` shows."""
    count = len(report.params)
    if report.status is Status.NONDETERMINISTIC:
        headline = "gradguard: NONDETERMINISTIC loss, gradients not judged"
    elif report.passed:
        headline = "gradguard: PASSED, " + (
            "the 1 tensor agrees" if count == 1 else f"all {count} tensors agree"
        )
    elif report.status is Status.INCONCLUSIVE:
        # Either some tensors could not be judged, or every tensor straddled kinks.
        unjudged = report.inconclusive or tuple(
            p.name for p in report.params if p.status is Status.NON_DIFFERENTIABLE
        )
        headline = (
            f"gradguard: INCONCLUSIVE, {len(unjudged)} of {count} tensors could not "
            "be judged: " + ", ".join(unjudged)
        )
    else:
        headline = (
            f"gradguard: FAILED, {len(report.failed)} of {len(report.params)} tensors wrong: "
            + ", ".join(report.failed)
        )
    step = f"eps {report.eps:.3g}{' relative' if report.eps_relative else ''}"
    summary = (
        f"  difference {report.difference:.3e} (tolerance {report.tolerance:.0e}), {step}, "
        f"{report.dtype}, {report.evaluations} evaluations, {report.duration_s:.3f} s, "
        f"seed {report.seed}"
    )
    header = (
        "tensor",
        "shape",
        "status",
        "difference",
        "probes",
        "worst at",
        "analytic",
        "numeric",
    )
    rows = [header]
    for p in report.params:
        probes = f"{p.coordinates}c+{p.directions}d"
        if p.kinks:
            probes += f" ({p.kinks} kink{'s' if p.kinks > 1 else ''})"
        rows.append(
            (
                p.name,
                str(p.shape),
                p.status.value.upper() if not p.status.passed else p.status.value,
                f"{p.difference:.2e}",
                probes,
                _fmt_index(p.worst_index) + _fmt_owners(p.worst_owners),
                _fmt_number(p.worst_analytic),
                _fmt_number(p.worst_numeric),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [headline, summary, ""]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    hints = [(p.name, p.hint) for p in report.params if p.hint]
    if report.notes:
        lines.append("  notes: " + ", ".join(f"{k}: {v}" for k, v in report.notes.items()))
    if report.hint or hints:
        lines.append("")
    if report.hint:
        lines.append(f"  hint: {report.hint}")
    for name, hint in hints:
        lines.append(f"  {name}: {hint}")
    return "\n".join(line.rstrip() for line in lines)
