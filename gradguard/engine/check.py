"""The check itself: central differences on a flat view, judged per tensor.

Pure NumPy on flat float64 vectors; no framework, no I/O, no logging. The adapter's
:class:`~gradguard.kit.contract.FlatView` is the only way in and out.

A check makes *probes*. A coordinate probe perturbs one element; a direction probe perturbs a
whole tensor along a random unit vector, so every element takes part in two evaluations.
Each probe gives a numeric derivative (central difference) and the matching analytic value.
Per tensor, the seed's relative difference is computed over its probes and judged:

1. *First look.* The discrepancy ``||numeric - analytic||`` is allowed
   ``tol * (||analytic|| + ||numeric||)`` (the seed's rule), plus ``tol`` times the model's
   gradient scale (so a tensor whose true gradient is ~0 is not judged by noise/noise),
   plus the a-priori round-off of the differences (``u * |J| / h``).
2. *Second look*, only for tensors that fail the first: every probe is repeated at half the
   step. The change between the two steps estimates the finite-difference error, which is
   added to the allowance. Probes whose one-sided differences disagree and do not shrink with
   the step straddle a kink: they are verified with a one-sided Richardson estimate from the
   clean side when one exists, and otherwise left out (status ``non-differentiable``).
3. *Localization*, for a failing tensor whose sampled coordinates all look right: the worst
   failing direction is bisected over the tensor's elements, O(log n) probes, down to the
   element that carries the error.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from gradguard.coverage import Coverage
from gradguard.engine.layout import Layout
from gradguard.engine.numerics import (
    default_step,
    default_tolerance,
    relative_difference,
    unit_roundoff,
)
from gradguard.engine.sampling import allocate, rademacher_signs, sample_coordinates
from gradguard.errors import LossError, SettingsError
from gradguard.results import CheckReport, ParamReport, Status, overall_status

if TYPE_CHECKING:
    # The contract lives in the adapter kit, one layer up; the engine only uses its methods.
    from gradguard.kit.contract import FlatView

__all__ = ["DEFAULT_COORDINATES", "DEFAULT_DIRECTIONS", "Settings", "run_check"]

FloatArray = npt.NDArray[np.float64]

DEFAULT_DIRECTIONS = 2
"""Random directions per tensor in the default strategy."""

DEFAULT_COORDINATES = 8
"""Sampled coordinates in the default strategy (at least one per tensor)."""

# A loss that changes by more than this many units of round-off between two evaluations
# at the same point is nondeterministic (dropout, augmentation), not merely noisy.
_NONDETERMINISM_ULPS = 64.0
# Round-off of one loss evaluation, in units of u * |J| (accumulated over the computation).
_ROUNDOFF_ULPS = 4.0
# How many noise estimates a discrepancy must exceed to count as a bug.
_NOISE_FACTOR = 2.0


def _as_builtin(value: object) -> object:
    """NumPy scalars become Python ones, so reports stay plain JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _as_names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise SettingsError(
            f"tensors must be a list of tensor names, e.g. ['W1', 'b1'], got {value!r}"
        )
    names = tuple(value)
    if not names or not all(isinstance(name, str) for name in names):
        raise SettingsError(
            f"tensors must be a non-empty list of tensor names, e.g. ['W1', 'b1'], got {value!r}"
        )
    return names


def _check_positive(name: str) -> Callable[[object, attrs.Attribute[float | None], object], None]:
    def validate(_: object, __: attrs.Attribute[float | None], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise SettingsError(f"{name} must be a positive number, got {value!r}")
        if not math.isfinite(float(value)) or float(value) <= 0.0:
            raise SettingsError(f"{name} must be a positive finite number, got {value!r}")

    return validate


def _check_count(name: str) -> Callable[[object, attrs.Attribute[int | None], object], None]:
    def validate(_: object, __: attrs.Attribute[int | None], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise SettingsError(f"{name} must be a non-negative int, got {value!r}")

    return validate


def _check_sample(_: object, __: attrs.Attribute[object], value: object) -> None:
    if value is None or value == "all":
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise SettingsError(
            f"sample must be None (the default strategy), a non-negative int or 'all', "
            f"got {value!r}"
        )


@attrs.frozen
class Settings:
    """The options of one check, validated.

    Attributes:
        eps: Absolute step, or ``None`` for the dtype's relative step
            (``u**(1/3) * max(1, |x|)``).
        tolerance: Tolerance on the relative difference, or ``None`` for the dtype's default.
        sample: ``None`` (default strategy), an int k (k stratified coordinates) or ``"all"``.
        directions: Random directions per tensor, or ``None`` for the default.
        seed: Seed of the private generator, or ``None`` to draw one (it is recorded).
        tensors: Names of the tensors to check, or ``None`` for all of them.
        tensor_window: ``(start, count)``: check ``count`` tensors from position ``start``
            (modulo the number of tensors), for front doors that rotate over the tensors.
    """

    eps: float | None = attrs.field(
        default=None, converter=_as_builtin, validator=_check_positive("eps")
    )
    tolerance: float | None = attrs.field(
        default=None, converter=_as_builtin, validator=_check_positive("tolerance")
    )
    sample: int | Literal["all"] | None = attrs.field(
        default=None, converter=_as_builtin, validator=_check_sample
    )
    directions: int | None = attrs.field(
        default=None, converter=_as_builtin, validator=_check_count("directions")
    )
    seed: int | None = attrs.field(
        default=None, converter=_as_builtin, validator=_check_count("seed")
    )
    tensors: tuple[str, ...] | None = attrs.field(default=None, converter=_as_names)
    tensor_window: tuple[int, int] | None = None

    def __attrs_post_init__(self) -> None:
        if self.sample == 0 and self.resolved_directions == 0:
            raise SettingsError(
                "nothing to check: sample=0 and directions=0; ask for some coordinates "
                "(sample=32, sample='all') or some directions (directions=2)"
            )

    @property
    def resolved_directions(self) -> int:
        """Directions per tensor after applying the defaults."""
        if self.directions is not None:
            return int(self.directions)
        return 0 if self.sample == "all" else DEFAULT_DIRECTIONS


@attrs.define
class _Probes:
    """Per-probe bookkeeping, one entry per probe, in the order they were made."""

    segment: list[int] = attrs.Factory(list)
    is_direction: list[bool] = attrs.Factory(list)
    local: list[int] = attrs.Factory(list)  # element for a coordinate, direction number else
    step: list[float] = attrs.Factory(list)
    analytic: list[float] = attrs.Factory(list)
    numeric: list[float] = attrs.Factory(list)
    forward: list[float] = attrs.Factory(list)
    backward: list[float] = attrs.Factory(list)
    roundoff: list[float] = attrs.Factory(list)


class _Difference(NamedTuple):
    """One central difference, with its one-sided halves and round-off estimate."""

    numeric: float
    analytic: float
    forward: float
    backward: float
    roundoff: float


class _Run:
    """The state of one check while it runs."""

    def __init__(self, view: FlatView, settings: Settings, seed: int) -> None:
        self.view = view
        self.layout = view.layout
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.evaluations = 0
        self.gradient_calls = 0
        self.loss0 = math.nan
        self.jitter = 0.0  # |J(theta) - J(theta)| seen at the unperturbed point
        self.originals: list[FloatArray] = []
        self.rms: list[float] = []
        self._buffers: dict[int, tuple[FloatArray, FloatArray]] = {}
        self.grad: FloatArray = np.empty(0)
        # Per tensor, its directions as int8 signs; the unit vector is signs / sqrt(size).
        self.directions: list[list[npt.NDArray[np.int8]]] = []
        self.probes = _Probes()
        self.relative_step = settings.eps is None
        self.u = 0.0
        self.h = 0.0
        self.tolerance = 0.0

    # -- evaluations ---------------------------------------------------------------------

    def loss(self, s: int | None = None, local: int | None = None, step: float = 0.0) -> float:
        """Evaluate the loss; ``s``, ``local`` and ``step`` only name the point in an error."""
        value = self.view.evaluate()
        self.evaluations += 1
        if not math.isfinite(value):
            raise LossError(
                f"the loss is {value} {self._describe(s, local, step)}; gradients can only be "
                "checked where the loss is finite (check the inputs, a log of 0, an overflow "
                "in exp)"
            )
        return value

    def segment_grad(self, s: int) -> FloatArray:
        segment = self.layout[s]
        return self.grad[segment.offset : segment.stop]

    def _describe(self, s: int | None, local: int | None, step: float) -> str:
        if s is None:
            return "at the unperturbed parameters"
        segment = self.layout[s]
        if local is None:
            return f"when {segment.name} is perturbed along a direction by {step:+.3g}"
        index = list(segment.unravel(local))
        return f"when {segment.name}{index} is perturbed by {step:+.3g}"

    def coordinate(self, s: int, local: int, scale: float = 1.0) -> _Difference:
        """Central difference along one element (``scale`` shrinks the step)."""
        x = float(self.originals[s][local])
        step = self.h * max(1.0, abs(x)) * scale if self.relative_step else self.h * scale
        view = self.view
        plus = view.write_element(s, local, x + step)
        j_plus = self.loss(s, local, step)
        minus = view.write_element(s, local, x - step)
        j_minus = self.loss(s, local, -step)
        view.reset_element(s, local)
        if self.relative_step:
            d_plus, d_minus = plus - x, x - minus  # the steps actually taken after rounding
        else:
            d_plus = d_minus = step  # the seed recipe divides by 2 * eps
        return _Difference(
            numeric=(j_plus - j_minus) / (d_plus + d_minus),
            analytic=float(self.segment_grad(s)[local]),
            forward=(j_plus - self.loss0) / d_plus,
            backward=(self.loss0 - j_minus) / d_minus,
            roundoff=self.noise(j_plus, j_minus) / (d_plus + d_minus),
        )

    def direction(
        self, s: int, v: npt.NDArray[np.int8] | FloatArray, scale: float = 1.0
    ) -> _Difference:
        """Central difference along a direction over one tensor.

        ``v`` is either int8 signs (the unit vector ``v / sqrt(size)``) or a float unit vector
        (zeros allowed: bisection restricts a direction to part of the tensor).
        """
        x = self.originals[s]
        step = self.h * scale * (max(1.0, self.rms[s]) if self.relative_step else 1.0)
        unit = 1.0 / math.sqrt(v.size) if v.dtype == np.int8 else 1.0
        # Two reusable buffers per tensor: no fresh multi-megabyte temporaries per probe.
        up, down = self.buffers(s)
        np.multiply(v, step * unit, out=down)
        np.add(x, down, out=up)
        plus = self.view.write(s, None, up)
        j_plus = self.loss(s, None, step)
        np.subtract(x, down, out=down)
        minus = self.view.write(s, None, down)
        j_minus = self.loss(s, None, -step)
        self.view.reset(s, None)
        g = self.segment_grad(s)
        if plus is up and minus is down and self.layout[s].dtype == np.float64:
            # Stored as computed: x +- step*v differ from step*v by float64 rounding only,
            # ~1e-16 |x| per element, averaging out; g . v is then exact to ~1e-10 relative.
            analytic = float(np.dot(g, v)) * unit
        else:
            # The analytic change along the steps actually stored (rounded to the tensor's
            # dtype), from their difference: dot(g, plus) - dot(g, minus) would cancel.
            np.subtract(plus, minus, out=up)
            analytic = float(np.dot(g, up)) / (2.0 * step)
        return _Difference(
            numeric=(j_plus - j_minus) / (2.0 * step),
            analytic=analytic,
            forward=(j_plus - self.loss0) / step,
            backward=(self.loss0 - j_minus) / step,
            roundoff=self.noise(j_plus, j_minus) / (2.0 * step),
        )

    def buffers(self, s: int) -> tuple[FloatArray, FloatArray]:
        if s not in self._buffers:
            size = self.layout[s].size
            self._buffers[s] = (np.empty(size), np.empty(size))
        return self._buffers[s]

    def noise(self, j_plus: float, j_minus: float) -> float:
        """A-priori error of ``J(+) - J(-)`` from round-off and observed jitter."""
        magnitude = max(abs(j_plus), abs(j_minus), abs(self.loss0))
        return 2.0 * (_ROUNDOFF_ULPS * self.u * magnitude + self.jitter)

    def record(self, s: int, is_direction: bool, local: int, step: float, d: _Difference) -> None:
        p = self.probes
        p.segment.append(s)
        p.is_direction.append(is_direction)
        p.local.append(local)
        p.step.append(step)
        p.analytic.append(d.analytic)
        p.numeric.append(d.numeric)
        p.forward.append(d.forward)
        p.backward.append(d.backward)
        p.roundoff.append(d.roundoff)


@attrs.frozen
class _Judgement:
    status: Status
    difference: float
    kinks: int
    worst_index: tuple[int, ...] | None
    worst_analytic: float | None
    worst_numeric: float | None
    hint: str


def run_check(view: FlatView, settings: Settings, coverage: Coverage | None = None) -> CheckReport:
    """Run one gradient check on an open view and return its report.

    The caller owns the view (and restores it on exit); this function only writes perturbed
    values and resets each one after use.

    Args:
        view: The adapter's open view of the parameters.
        settings: The check's options.
        coverage: The run's coverage, for a front door that checks repeatedly: coordinates
            are then taken from those not probed yet, and the report says how much of the
            parameters has been probed so far.

    Raises:
        SettingsError: ``settings.tensors`` names a tensor that does not exist.
        LossError: the loss is not finite somewhere it is evaluated.
        GradientError: the analytic gradient is unusable (raised by the view).
    """
    started = time.perf_counter()
    seed = settings.seed if settings.seed is not None else secrets.randbits(32)
    run = _Run(view, settings, seed)
    layout = view.layout
    chosen = _chosen_segments(layout, settings.tensors)
    if settings.tensor_window is not None:
        start, count = settings.tensor_window
        window = {chosen[(start + i) % len(chosen)] for i in range(min(count, len(chosen)))}
        chosen = [s for s in chosen if s in window]
    run.originals = [view.original(s) for s in range(len(layout))]
    run.rms = [math.sqrt(float(np.dot(x, x)) / x.size) if x.size else 0.0 for x in run.originals]

    loss_a = run.loss()
    run.loss0 = loss_a
    loss_dtype = view.loss_dtype
    run.u = unit_roundoff(loss_dtype)
    run.h = settings.eps if settings.eps is not None else default_step(loss_dtype)
    run.tolerance = (
        settings.tolerance if settings.tolerance is not None else default_tolerance(loss_dtype)
    )
    run.grad = view.gradient()
    run.gradient_calls += 1
    loss_b = run.loss()
    run.jitter = abs(loss_b - loss_a)
    base = {
        "eps": run.h,
        "eps_relative": run.relative_step,
        "seed": seed,
        "adapter": view.adapter,
        "dtype": str(loss_dtype),
        "sample": settings.sample,
        "loss": loss_a,
        "tolerance": run.tolerance,
    }
    if run.jitter > _NONDETERMINISM_ULPS * run.u * max(abs(loss_a), abs(loss_b)):
        return _nondeterministic_report(run, chosen, base, started, loss_a, loss_b)

    sizes = [layout[s].size for s in chosen]
    if settings.sample == "all":
        counts = list(sizes)
    else:
        k = DEFAULT_COORDINATES if settings.sample is None else int(settings.sample)
        if settings.sample is None:
            k = max(k, len(sizes))
        counts = allocate(sizes, k, run.rng)
    if coverage is None:
        chosen_picks = sample_coordinates(sizes, counts, run.rng)
    else:
        chosen_picks = [
            coverage.take(layout[s].name, size, count)
            for s, size, count in zip(chosen, sizes, counts, strict=True)
        ]
    picks: dict[int, npt.NDArray[np.intp]] = dict(zip(chosen, chosen_picks, strict=True))
    n_directions = settings.resolved_directions
    # A tensor whose every element is a coordinate probe gains nothing from directions.
    run.directions = [
        [rademacher_signs(segment.size, run.rng) for _ in range(n_directions)]
        if s in picks and len(picks[s]) < segment.size
        else []
        for s, segment in enumerate(layout)
    ]

    for s in chosen:
        for local in picks[s]:
            run.record(s, False, int(local), 1.0, run.coordinate(s, int(local)))
        for k_dir, v in enumerate(run.directions[s]):
            run.record(s, True, k_dir, 1.0, run.direction(s, v))

    analytic = np.array(run.probes.analytic)
    numeric = np.array(run.probes.numeric)
    overall = relative_difference(analytic, numeric)
    # The model's gradient scale: RMS of the analytic gradient over every element. A unit
    # direction's derivative has the same scale as one element's, so one floor serves both.
    scale = math.sqrt(float(np.dot(run.grad, run.grad)) / run.grad.size) if run.grad.size else 0.0

    segment_of = np.array(run.probes.segment, dtype=np.intp)
    reports = []
    for s in chosen:
        segment = layout[s]
        members = np.flatnonzero(segment_of == s)
        judgement = _judge(run, s, members, scale)
        reports.append(
            ParamReport(
                name=segment.name,
                shape=segment.shape,
                dtype=str(segment.dtype),
                status=judgement.status,
                difference=judgement.difference,
                tolerance=run.tolerance,
                coordinates=len(picks[s]),
                directions=len(run.directions[s]),
                kinks=judgement.kinks,
                worst_index=judgement.worst_index,
                worst_analytic=judgement.worst_analytic,
                worst_numeric=judgement.worst_numeric,
                hint=judgement.hint,
            )
        )
    status = overall_status(reports)
    return CheckReport(
        passed=status.passed,
        status=status,
        difference=overall,
        params=tuple(reports),
        evaluations=run.evaluations,
        gradient_calls=run.gradient_calls,
        duration_s=time.perf_counter() - started,
        notes=dict(view.notes),
        coverage=None if coverage is None else coverage.fraction(layout),
        **base,  # type: ignore[arg-type]
    )


def _chosen_segments(layout: Layout, names: tuple[str, ...] | None) -> list[int]:
    """The positions of the tensors to check, in layout order."""
    if names is None:
        return list(range(len(layout)))
    unknown = [name for name in names if name not in layout.names]
    if unknown:
        raise SettingsError(
            f"tensors names {unknown}, which are not in params; tensors: " + ", ".join(layout.names)
        )
    wanted = set(names)
    return [s for s, segment in enumerate(layout) if segment.name in wanted]


def _nondeterministic_report(
    run: _Run,
    chosen: list[int],
    base: dict[str, object],
    started: float,
    loss_a: float,
    loss_b: float,
) -> CheckReport:
    hint = (
        f"the loss gave {loss_a!r} and then {loss_b!r} at the same parameters: dropout, "
        "data augmentation or a random generator inside the loss? Make it repeatable "
        "(a fixed seed inside the loss, or inference mode) and check again"
    )
    reports = tuple(
        ParamReport(
            name=segment.name,
            shape=segment.shape,
            dtype=str(segment.dtype),
            status=Status.NONDETERMINISTIC,
            difference=math.nan,
            tolerance=run.tolerance,
            coordinates=0,
            directions=0,
        )
        for segment in (run.layout[s] for s in chosen)
    )
    return CheckReport(
        passed=False,
        status=Status.NONDETERMINISTIC,
        difference=math.nan,
        params=reports,
        evaluations=run.evaluations,
        gradient_calls=run.gradient_calls,
        duration_s=time.perf_counter() - started,
        hint=hint,
        notes=dict(run.view.notes),
        **base,  # type: ignore[arg-type]
    )


def _probe_allowance(
    tol: float, analytic: FloatArray, numeric: FloatArray, noise: FloatArray, scale: float
) -> FloatArray:
    """How large each probe's ``|numeric - analytic|`` may be before it counts as a bug."""
    relative = tol * (np.abs(analytic) + np.abs(numeric))
    return np.maximum(relative, tol * scale) + _NOISE_FACTOR * noise


def _fails(
    tol: float, analytic: FloatArray, numeric: FloatArray, noise: FloatArray, scale: float
) -> bool:
    """Whether a tensor's probes show a bug.

    Two tests, either one fails the tensor: the seed's rule over all its probes (the norm of
    the discrepancies against the norms of the values, plus the noise), which sees errors
    spread thinly over many probes; and each probe against its own allowance, so that one
    probe that is far off is not averaged away by the noise allowance of many good ones.
    """
    gap = np.abs(numeric - analytic)
    relative = tol * float(np.linalg.norm(analytic) + np.linalg.norm(numeric))
    # A tensor whose true gradient is ~0 is judged against the model's gradient scale
    # instead of against itself (noise/noise); for an ordinary tensor the relative term rules.
    floor = tol * scale * math.sqrt(analytic.size)
    allowed = max(relative, floor) + _NOISE_FACTOR * float(np.linalg.norm(noise))
    if float(np.linalg.norm(gap)) > allowed:
        return True
    return bool(np.any(gap > _probe_allowance(tol, analytic, numeric, noise, scale)))


def _judge(run: _Run, s: int, members: npt.NDArray[np.intp], scale: float) -> _Judgement:
    """Decide one tensor's status from its probes (second look and localization on demand)."""
    p = run.probes
    tol = run.tolerance
    analytic = np.array([p.analytic[i] for i in members])
    numeric = np.array([p.numeric[i] for i in members])
    noise = np.array([p.roundoff[i] for i in members])
    if not _fails(tol, analytic, numeric, noise, scale):
        return _finish(run, s, members, analytic, numeric, noise, Status.PASS, (0, 0), scale)

    # Second look: every probe again at half the step.
    keep = np.ones(members.size, dtype=bool)
    verified = 0
    for j, i in enumerate(members):
        first = _Difference(p.numeric[i], p.analytic[i], p.forward[i], p.backward[i], noise[j])
        if p.is_direction[i]:
            half = run.direction(s, run.directions[s][p.local[i]], scale=0.5)
        else:
            half = run.coordinate(s, p.local[i], scale=0.5)
        error = abs(first.numeric - half.numeric)
        asymmetry = abs(first.forward - first.backward)
        half_asymmetry = abs(half.forward - half.backward)
        # Asymmetry that noise cannot produce: well above the measured noise (the change
        # between the two steps). The a-priori round-off bound is often 5-10x too wide, but a
        # quarter of it guards against a measured noise that is small by chance.
        noise_level = max(error, 0.25 * first.roundoff)
        smooth_limit = 8.0 * noise_level + tol * (abs(first.forward) + abs(first.backward))
        if half_asymmetry > 0.75 * asymmetry and asymmetry > smooth_limit:
            # One-sided differences disagree and do not shrink with the step: a kink lies
            # within the step. Verify from a clean side with a one-sided Richardson estimate.
            clean = [2.0 * half.forward - first.forward, 2.0 * half.backward - first.backward]
            best = min(clean, key=lambda c: abs(c - first.analytic))
            allowed = tol * max(abs(first.analytic) + abs(best), scale)
            if abs(best - first.analytic) <= allowed + 4.0 * _NOISE_FACTOR * first.roundoff:
                numeric[j] = best
                noise[j] = 4.0 * first.roundoff
                verified += 1
            else:
                keep[j] = False
        else:
            noise[j] = first.roundoff + half.roundoff + error
    if not keep.any():
        return _Judgement(
            status=Status.NON_DIFFERENTIABLE,
            difference=relative_difference(analytic, numeric),
            kinks=members.size,
            worst_index=None,
            worst_analytic=None,
            worst_numeric=None,
            hint=(
                "every probe straddles a non-differentiable point (ReLU at 0, a max tie): "
                "not judged; check again at other parameters or with more samples"
            ),
        )
    kept = members[keep]
    a, n, e = analytic[keep], numeric[keep], noise[keep]
    status = Status.FAIL if _fails(tol, a, n, e, scale) else Status.PASS
    excluded = int(members.size - kept.size)
    return _finish(run, s, kept, a, n, e, status, (verified, excluded), scale)


def _finish(
    run: _Run,
    s: int,
    members: npt.NDArray[np.intp],
    analytic: FloatArray,
    numeric: FloatArray,
    noise: FloatArray,
    status: Status,
    kinks: tuple[int, int],
    scale: float,
) -> _Judgement:
    """Name the worst element and write the hint, localizing a failure if needed."""
    p = run.probes
    segment = run.layout[s]
    tol = run.tolerance
    is_direction = np.array([p.is_direction[i] for i in members], dtype=bool)
    gap = np.abs(numeric - analytic)
    allowed = _probe_allowance(tol, analytic, numeric, noise, scale)
    coordinate_rows = np.flatnonzero(~is_direction)
    worst: tuple[tuple[int, ...], float, float] | None = None
    if coordinate_rows.size:
        j = int(coordinate_rows[np.argmax(gap[coordinate_rows])])
        local = p.local[members[j]]
        worst = (segment.unravel(local), float(analytic[j]), float(numeric[j]))
    localized = False
    if status is Status.FAIL:
        coordinate_fails = bool(np.any(gap[coordinate_rows] > allowed[coordinate_rows]))
        direction_rows = np.flatnonzero(is_direction)
        if not coordinate_fails and direction_rows.size:
            j = int(direction_rows[np.argmax(gap[direction_rows] - allowed[direction_rows])])
            signs = run.directions[s][p.local[members[j]]]
            unit = signs.astype(np.float64) / math.sqrt(signs.size)
            found = _bisect(run, s, unit, scale)
            if found is not None:
                worst = found
                localized = True
    difference = relative_difference(analytic, numeric)
    verified, excluded = kinks
    if status is Status.FAIL:
        hint = _diagnose(analytic, numeric, localized, worst)
    else:
        notes = []
        if verified:
            notes.append(f"{_probes(verified)} straddled a kink, verified from its clean side")
        if excluded:
            notes.append(f"{_probes(excluded)} straddled a kink and were left out")
        if difference > tol:
            notes.append(
                "the difference exceeds the tolerance but not the finite-difference noise "
                "measured at two steps (a loss large next to its gradient, or eps too small "
                "for the dtype)"
            )
        hint = "; ".join(notes)
    return _Judgement(
        status=status,
        difference=difference,
        kinks=verified + excluded,
        worst_index=None if worst is None else worst[0],
        worst_analytic=None if worst is None else worst[1],
        worst_numeric=None if worst is None else worst[2],
        hint=hint,
    )


def _probes(count: int) -> str:
    return f"{count} probe{'s' if count > 1 else ''}"


def _bisect(
    run: _Run, s: int, v: FloatArray, scale: float
) -> tuple[tuple[int, ...], float, float] | None:
    """Narrow a failing direction down to one element by halving its support.

    The discrepancy along a direction is the sum of the per-element errors it touches, so
    it follows the half that carries the larger share; each level costs two probes.
    """
    segment = run.layout[s]
    support = np.arange(segment.size, dtype=np.intp)
    while support.size > 1:
        halves = (support[: support.size // 2], support[support.size // 2 :])
        shares = []
        for half in halves:
            restricted = np.zeros_like(v)
            restricted[half] = v[half]
            norm = float(np.linalg.norm(restricted))
            if norm == 0.0:
                shares.append(0.0)
                continue
            d = run.direction(s, restricted / norm)
            # Discrepancy per unit of the original direction, beyond what noise explains.
            shares.append(norm * (abs(d.numeric - d.analytic) - _NOISE_FACTOR * d.roundoff))
        support = halves[int(np.argmax(shares))]
    local = int(support[0])
    d = run.coordinate(s, local)
    return segment.unravel(local), d.analytic, d.numeric


def _diagnose(
    analytic: FloatArray,
    numeric: FloatArray,
    localized: bool,
    worst: tuple[tuple[int, ...], float, float] | None,
) -> str:
    """One line on what a failing tensor's numbers suggest."""
    norm_a = float(np.linalg.norm(analytic))
    norm_n = float(np.linalg.norm(numeric))
    if localized and worst is not None:
        where = "[" + ", ".join(str(i) for i in worst[0]) + "]"
        return (
            f"the error is confined to part of the tensor (bisection found {where}); "
            "the sampled coordinates elsewhere agree: an indexing bug, one row or column?"
        )
    if norm_a <= 1e-3 * norm_n:
        return (
            "the analytic gradient is ~0 but the loss depends on this tensor: a missing term, "
            "a detached branch, a stop_gradient?"
        )
    if norm_n <= 1e-3 * norm_a:
        return (
            "the loss does not depend on this tensor (numeric ~0) but the analytic gradient "
            "is not zero: a gradient for the wrong tensor, or an unused parameter?"
        )
    factor = float(np.dot(analytic, numeric) / np.dot(numeric, numeric))
    residual = float(np.linalg.norm(analytic - factor * numeric)) / norm_a
    if residual < 0.05:
        if abs(factor + 1.0) < 0.01:
            return "analytic = -1 x numeric: the sign is wrong"
        return (
            f"analytic = {factor:.6g} x numeric: a wrong constant factor "
            "(a missing 1/m or 1/2, a doubled term)?"
        )
    off = relative_difference(analytic, numeric)
    return (
        f"analytic and numeric disagree (difference {off:.2g}) with no constant factor: "
        "a missing or extra term, or the wrong activation derivative?"
    )
