"""The check itself: central differences on a flat view, judged per tensor.

Pure NumPy on flat float64 vectors; no framework, no I/O, no logging. The adapter's
:class:`~gradguard.kit.contract.FlatView` is the only way in and out.

A check makes *probes*. A coordinate probe perturbs one element; a direction probe perturbs a
whole tensor along a random unit vector, so every element takes part in two evaluations.
Each probe gives a numeric derivative (central difference) and the matching analytic value.
The stages of one check, in order:

1. *Step.* A step the dtype cannot represent at the parameters' magnitude, or one larger than
   the parameters themselves, is refused before any evaluation.
2. *Probes.* Coordinates (half of them among the elements whose analytic gradient is not zero,
   where a sparse gradient lives) and random directions, per tensor.
3. *First look* (:mod:`gradguard.engine.verdict`): each tensor's probes against the tolerance
   plus their a-priori round-off; pass, zero, fail or inconclusive.
4. *Second look*, for tensors that failed or could not see: every probe again at half the
   step. The change between the two steps measures the finite-difference error, which replaces
   the a-priori bound. Probes whose one-sided differences disagree and do not shrink with the
   step straddle a kink: they are verified with a one-sided Richardson estimate from the clean
   side when one exists, and otherwise left out (status ``non-differentiable``).
5. *Retry*, for a tensor still inconclusive with the user's step: the whole tensor again with
   the dtype's own step, and the report says so.
6. *Localization and hint* (:mod:`gradguard.engine.hints`), for a failing tensor: the worst
   failing direction is bisected down to the element that carries the error, and the numbers
   are read for a likely cause.

With screening (the default strategy, :mod:`gradguard.engine.screen`), stage 2's directions are
joint probes over every tensor at once; stages 3-6 run only for the tensors the screen names as
suspect (group testing) or cannot resolve; the others are judged by the screen.
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt

from gradguard.engine.directions import Direction
from gradguard.engine.hints import diagnose_failure, zero_hint
from gradguard.engine.joint_coordinates import read_jointly
from gradguard.engine.layout import Layout
from gradguard.engine.numerics import (
    GRADIENT_ULPS,
    Difference,
    default_gradient_tolerance,
    default_step,
    default_tolerance,
    gradient_roundoff,
    relative_difference,
    unit_roundoff,
)
from gradguard.engine.sampling import allocate, sample_among_nonzero, sample_coordinates
from gradguard.engine.screen import ScreenOutcome, screen
from gradguard.engine.selection import Selection
from gradguard.engine.spread import (
    SPREAD_FACTOR,
    blinded_by_spread,
    screens_with_spread,
    spread_hint,
    spread_tolerance,
    tensor_spreads,
)
from gradguard.engine.values import DenseValues, TensorValues
from gradguard.engine.verdict import BLIND_FACTOR, NOISE_FACTOR, Evidence, allowance, classify
from gradguard.errors import LossError, SettingsError
from gradguard.results import CheckReport, ParamReport, Status, overall_status

if TYPE_CHECKING:
    # The contract lives in the adapter kit, one layer up; the engine only uses its methods.
    from gradguard.kit.contract import FlatView

__all__ = [
    "DEFAULT_COORDINATES",
    "DEFAULT_DIRECTIONS",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Settings",
    "run_check",
]

FloatArray = npt.NDArray[np.float64]

DEFAULT_DIRECTIONS = 2
"""Random directions per tensor in the default strategy."""

DEFAULT_COORDINATES = 8
"""Sampled coordinates in the default strategy.

Per-tensor probing takes at least one per tensor (``max(8, T)``); screening takes 8 whatever
the number of tensors and reads them in one joint probe (an element-level spot check at the
cost of two evaluations; a Guard's rotation makes them cover the model over a run; a tensor
whose coordinates do not read clean jointly has them probed one by one, and those name its
worst element).
"""

STRATEGIES = ("screen", "per-tensor")
"""How a check spends its probes: ``"screen"`` probes every tensor jointly and only suspects
one by one; ``"per-tensor"`` probes each tensor on its own."""

DEFAULT_STRATEGY = "screen"
"""The strategy a check uses unless told otherwise (on views that allow joint writes)."""

# A loss that changes by more than this many units of round-off between two evaluations
# at the same point is nondeterministic (dropout, augmentation), not merely noisy.
_NONDETERMINISM_ULPS = 64.0
# Round-off of one loss evaluation, in units of u * |J| (accumulated over the computation).
_ROUNDOFF_ULPS = 4.0
# The allowance for J(+) - J(-) in units of one evaluation's measured round-off (the
# standard deviation pooled over the second look's probes).
_LOSS_NOISE_SIGMAS = 5.0
_GRADIENT_ULPS = GRADIENT_ULPS
# The round-off floor at the model's gradient scale, for such a gradient (a bias before
# BatchNorm: float32 sums that cancel to ~1e-8 where float64 gives 1e-17), relative to the
# loss dtype's _FLOOR_ULPS: 4 x 16 units of the gradient dtype.
_GRADIENT_FLOOR_SHARE = 4.0
# How much wider than the dtype's step a tensor whose round-off hid the tolerance is probed
# again (at most), and the widest relative step that retry uses (_widen_step).
_WIDEST = 1024.0
# How much narrower a second look probes again where a probe looked like a kink (_narrowed).
_NARROWER = 16.0
# The widest relative step of that retry: 32x float32's step. A float32 loss evaluated in place
# (a sharded model, which has no float64 shadow) on a 4.35 M-parameter MLP was 0.2-3% off along
# unit directions at float32's step and still 0.2-1.6% at 1e-2 (every wide tensor inconclusive
# where the shadow passed); at 0.16, 3e-5 to 8e-4 (docs/numerics.md). The retry's own second
# look measures the truncation the wider step adds.
_WIDEST_STEP = 0.16
# Bisection: a half carrying this share of a failing direction's discrepancy holds the error.
_CONFINED_SHARE = 0.9


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


def _check_strategy(_: object, __: attrs.Attribute[str], value: object) -> None:
    if value not in STRATEGIES:
        raise SettingsError(
            f"strategy must be one of {', '.join(repr(v) for v in STRATEGIES)}, got {value!r}"
        )


def _check_order(_: object, __: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or value not in (1, 2):
        raise SettingsError(
            f"order must be 1 (the gradient) or 2 (Hessian-vector products), got {value!r}"
        )


def _check_mode(_: object, __: attrs.Attribute[str], value: object) -> None:
    if value not in ("reverse", "forward"):
        raise SettingsError(
            f"mode must be 'reverse' (the gradient, the default) or 'forward' (JVPs), got {value!r}"
        )


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
        strategy: ``"screen"`` (joint probes over all tensors; per-tensor probes only for
            suspects) or ``"per-tensor"`` (every tensor probed on its own).
        order: 1 (the gradient) or 2 (Hessian-vector products,
            :mod:`gradguard.engine.second_order`).
        mode: ``"reverse"`` (the gradient) or ``"forward"`` (forward-mode JVPs along the
            probes, :mod:`gradguard.engine.forward`).
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
    strategy: str = attrs.field(default=DEFAULT_STRATEGY, validator=_check_strategy)
    order: int = attrs.field(default=1, converter=_as_builtin, validator=_check_order)
    mode: str = attrs.field(default="reverse", validator=_check_mode)

    def __attrs_post_init__(self) -> None:
        if self.order == 2 and self.mode == "forward":
            raise SettingsError(
                "order=2 with mode='forward': a second-order check already compares the "
                "analytic H v (forward-over-reverse where the framework has it) with "
                "differences of the gradient; use order=2, or mode='forward' with order=1"
            )
        if self.order == 2 and self.sample is not None:
            raise SettingsError(
                f"sample={self.sample!r} does not apply to order=2: every element of H v is "
                "compared along each direction; set directions= instead"
            )
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
    span: list[float] = attrs.Factory(list)  # x+ - x-, the difference's denominator


_Difference = Difference


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
        self.loss_noise = 0.0  # measured round-off of one loss evaluation (0: not measured)
        self.u_grad = 0.0  # unit round-off of the analytic gradient's dtype
        self.grad_tiny = 0.0  # its smallest normal number, when less precise than the loss
        self.spreads: FloatArray = np.zeros(len(view.layout))  # per tensor, measured spread
        # Whole original values (flat vectors); none for a partitioned view, which serves
        # every reduction of them itself (``values``).
        self.originals: Sequence[FloatArray] = []
        self.rms: list[float] = []
        self.largest: list[float] = []  # per tensor, the largest |x|
        # Reductions of the originals and the gradient (whole vectors, or served by the view).
        self.values: TensorValues = DenseValues(view.layout, [], np.empty(0), view.write)
        self.nonzero: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self.grad_squares: FloatArray = np.zeros(0)  # per tensor, its gradient's sum of squares
        # Per tensor, its random directions, addressed by global element index.
        self.directions: list[list[Direction]] = []
        self.probes = _Probes()
        self.relative_step = settings.eps is None
        self.u = 0.0
        self.h = 0.0
        self.tolerance = 0.0
        self.sparse_sampling = False
        self.scale = 0.0  # the model's gradient scale (RMS of the analytic gradient)
        self.floor_u = 0.0  # the round-off unit of the verdict's floor
        self.spent: dict[int, int] = {}  # evaluations with tensor s perturbed on its own
        self.bisected: set[int] = set()
        self.screening = False  # the check screens tensors jointly (strategy "screen")
        self.extrapolated: set[int] = set()  # tensors judged on a Richardson third look
        self.narrowed: set[int] = set()  # tensors with a probe judged at a narrower step
        self.jointly: set[int] = set()  # tensors whose coordinates were read in one joint probe

    # -- evaluations ---------------------------------------------------------------------

    def loss(self, s: int | None = None, local: int | None = None, step: float = 0.0) -> float:
        """Evaluate the loss; ``s``, ``local`` and ``step`` only name the point in an error."""
        value = self.view.evaluate()
        self.evaluations += 1
        if s is not None:
            self.spent[s] = self.spent.get(s, 0) + 1
        if not math.isfinite(value):
            raise LossError(
                f"the loss is {value} {self._describe(s, local, step)}; gradients can only be "
                "checked where the loss is finite (check the inputs, a log of 0, an overflow "
                "in exp)"
            )
        return value

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
        x, analytic = self.values.element(s, local)
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
            analytic=analytic,
            forward=(j_plus - self.loss0) / d_plus,
            backward=(self.loss0 - j_minus) / d_minus,
            roundoff=self.noise(j_plus, j_minus) / (d_plus + d_minus),
            span=d_plus + d_minus,
        )

    def direction(self, s: int, v: Direction, scale: float = 1.0) -> _Difference:
        """Central difference along a unit direction over one tensor (``scale`` shrinks the
        step); bisection restricts a direction to part of the tensor."""
        step = self.h * scale * (max(1.0, self.rms[s]) if self.relative_step else 1.0)
        values = self.values
        values.write_along(s, v, step)
        j_plus = self.loss(s, None, step)
        values.write_along(s, v, -step)
        j_minus = self.loss(s, None, -step)
        self.view.reset(s, None)
        return _Difference(
            numeric=(j_plus - j_minus) / (2.0 * step),
            analytic=values.gradient_along(s, v, step),
            forward=(j_plus - self.loss0) / step,
            backward=(self.loss0 - j_minus) / step,
            roundoff=self.noise(j_plus, j_minus) / (2.0 * step),
            span=2.0 * step,
        )

    def noise(self, j_plus: float, j_minus: float) -> float:
        """A-priori error of ``J(+) - J(-)`` from round-off and observed jitter."""
        magnitude = max(abs(j_plus), abs(j_minus), abs(self.loss0))
        bound = 2.0 * (_ROUNDOFF_ULPS * self.u * magnitude + self.jitter)
        return max(bound, _LOSS_NOISE_SIGMAS * self.loss_noise)

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
        p.span.append(d.span)


@attrs.frozen
class _Judgement:
    status: Status
    difference: float
    kinks: int
    worst_index: tuple[int, ...] | None
    worst_analytic: float | None
    worst_numeric: float | None
    hint: str
    # For an inconclusive tensor: the smallest tolerance its noise could judge (the widening
    # retry's measure of how much larger a step it needs).
    reachable: float | None = None


def run_check(
    view: FlatView, settings: Settings, selection: Selection | None = None
) -> CheckReport:
    """Run one gradient check on an open view and return its report.

    The caller owns the view (and restores it on exit); this function only writes perturbed
    values and resets each one after use.

    Args:
        view: The adapter's open view of the parameters.
        settings: The check's options.
        selection: A front door's choice of tensors and coordinates (a Guard rotating over
            its run); ``None``: all of ``settings.tensors``, coordinates drawn here.

    Raises:
        SettingsError: ``settings.tensors`` names a tensor that does not exist, or ``eps`` is
            outside the range the dtype can use (before any evaluation).
        LossError: the loss is not finite somewhere it is evaluated.
        GradientError: the analytic gradient is unusable (raised by the view).
    """
    if settings.order == 2:
        from gradguard.engine.second_order import run_second_order  # it imports this module

        return run_second_order(view, settings, selection)
    started = time.perf_counter()
    seed = settings.seed if settings.seed is not None else secrets.randbits(32)
    if settings.mode == "forward":
        from gradguard.engine.forward import ForwardRun

        run: _Run = ForwardRun(view, settings, seed)
    else:
        run = _Run(view, settings, seed)
    layout = view.layout
    chosen = _chosen_segments(layout, settings.tensors)
    if selection is not None:
        chosen = list(selection.tensors(layout, chosen))
    partitioned = bool(getattr(view, "partitioned", False))
    if partitioned:
        squares, largest = view.original_summary()
    else:
        run.originals = [view.original(s) for s in range(len(layout))]
        run.values = DenseValues(layout, run.originals, np.empty(0), view.write)
        squares, largest = run.values.original_summary()
    run.rms = [
        math.sqrt(float(squares[s]) / segment.size) if segment.size else 0.0
        for s, segment in enumerate(layout)
    ]
    run.largest = [float(m) for m in largest]
    if settings.eps is not None:
        _check_step(run, chosen, float(settings.eps))

    loss_a = run.loss()
    run.loss0 = loss_a
    loss_dtype = view.loss_dtype
    run.u = unit_roundoff(loss_dtype)
    run.h = settings.eps if settings.eps is not None else default_step(loss_dtype)
    if partitioned:
        run.values = view  # FlatView serves TensorValues
    else:
        run.values = DenseValues(layout, run.originals, view.gradient(), view.write)
    run.grad_squares, run.nonzero = run.values.gradient_summary()
    grad_squares = float(np.sum(run.grad_squares))
    run.gradient_calls += 1
    # Forward mode's analytic side is the view's JVP, computed where the loss is evaluated.
    gradient_dtype = view.gradient_dtype if settings.mode == "reverse" else loss_dtype
    run.u_grad = gradient_roundoff(gradient_dtype)
    # The smallest normal number of a less precise gradient's dtype: a true gradient below it
    # (a float64 product of 125 factors, 6e-56) is 0 or subnormal in that dtype, which is as
    # right as the dtype can be.
    if run.u_grad > run.u and np.issubdtype(np.dtype(gradient_dtype), np.floating):
        run.grad_tiny = float(np.finfo(gradient_dtype).tiny)
    if settings.mode == "reverse":  # a forward-mode JVP has no measured spread
        run.spreads = tensor_spreads(view.gradient_spread(), layout)
    run.tolerance = (
        settings.tolerance
        if settings.tolerance is not None
        else max(
            default_tolerance(loss_dtype),
            default_gradient_tolerance(gradient_dtype),
            spread_tolerance(gradient_dtype, run.spreads),
        )
    )
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
    base_notes = {"gradient_dtype": str(gradient_dtype)} if gradient_dtype != loss_dtype else {}
    drifted = view.drifted()
    if drifted:
        return _mutation_report(run, chosen, drifted, base, started)
    if run.jitter > _NONDETERMINISM_ULPS * run.u * max(abs(loss_a), abs(loss_b)):
        return _nondeterministic_report(run, chosen, base, started, loss_a, loss_b)

    # The model's gradient scale: RMS of the analytic gradient over every element. A unit
    # direction's derivative has the same scale as one element's.
    scale = math.sqrt(grad_squares / layout.size) if layout.size else 0.0
    run.scale = scale
    run.floor_u = max(run.u, _GRADIENT_FLOOR_SHARE * run.u_grad)
    n_directions = settings.resolved_directions
    screening = _screens(run, n_directions)
    run.screening = screening
    picks = _pick_coordinates(run, chosen, selection, screening)
    outcome: ScreenOutcome | None = None
    coordinate_members: dict[int, npt.NDArray[np.intp]] = {}
    probed = chosen
    if screening:
        run.directions = [[] for _ in layout]  # coordinates first; directions for suspects
        coordinate_members = _coordinates_jointly(run, chosen, picks, scale)
        outcome = screen(
            run,
            chosen,
            n_directions,
            {s: _evidence(run, coordinate_members[s], scale) for s in chosen},
        )
        probed = outcome.suspects
        # A suspect is judged on its own evaluations: its coordinates read jointly are
        # probed again one by one (its second look compares steps of the same probe).
        for s in probed:
            if s in run.jointly:
                coordinate_members[s] = _probe(run, s, picks[s])
                run.jointly.discard(s)
    own = set(probed)
    # A tensor whose every element is a coordinate probe gains nothing from directions.
    run.directions = [
        [Direction.draw(segment.size, run.rng) for _ in range(n_directions)]
        if s in own and s in picks and len(picks[s]) < segment.size
        else []
        for s, segment in enumerate(layout)
    ]
    if screening:
        no_coordinates = np.empty(0, dtype=np.intp)
        members_of = {
            s: np.concatenate([coordinate_members[s], _probe(run, s, no_coordinates)])
            if s in own
            else coordinate_members[s]
            for s in chosen
        }
    else:
        members_of = {s: _probe(run, s, picks[s]) for s in chosen}
    first_pass = np.concatenate([members_of[s] for s in chosen]) if chosen else np.empty(0, int)
    # The seed's number over every probe made with the user's step (seed mode reproduces it).
    analytic_all = np.array(run.probes.analytic)[first_pass]
    numeric_all = np.array(run.probes.numeric)[first_pass]
    if outcome is not None:
        analytic_all = np.concatenate([analytic_all, outcome.analytic])
        numeric_all = np.concatenate([numeric_all, outcome.numeric])
    overall = relative_difference(analytic_all, numeric_all)

    judgements: dict[int, _Judgement] = {}
    retry: list[int] = []
    widened: dict[int, _Judgement] = {}
    if probed:
        judgements = _judge_all(run, probed, members_of, scale)
        retry = [s for s in probed if judgements[s].status is Status.INCONCLUSIVE]
        if retry and not run.relative_step:
            judgements.update(_retry_with_dtype_step(run, retry, picks, scale, judgements))
        widened = _widen_step(run, probed, picks, scale, judgements)
        judgements.update(widened)
        if settings.mode == "reverse":  # the other arrangements are of the gradient
            judgements = _name_arrangement_mistakes(run, judgements, members_of, scale)
    if outcome is not None:
        for s, (e, cleared) in outcome.cleared.items():
            judgements[s] = _screened(run, s, coordinate_members[s], e, cleared)

    owners = _worst_owners(run, chosen, judgements)
    reports = []
    for s in chosen:
        segment = layout[s]
        judgement = judgements[s]
        screened = outcome is not None and s in outcome.cleared
        judged_by = "screen" if screened else "bisected" if s in run.bisected else "probed"
        directions = (
            outcome.directions[s] if outcome is not None and screened else len(run.directions[s])
        )
        reports.append(
            ParamReport(
                name=segment.name,
                shape=segment.shape,
                dtype=str(segment.dtype),
                status=judgement.status,
                difference=judgement.difference,
                tolerance=run.tolerance,
                coordinates=len(picks[s]),
                directions=directions,
                kinks=judgement.kinks,
                worst_index=judgement.worst_index,
                worst_analytic=judgement.worst_analytic,
                worst_numeric=judgement.worst_numeric,
                hint=judgement.hint,
                judged_by=judged_by,
                evaluations=run.spent.get(s, 0),
                worst_owners=owners.get(s),
            )
        )
    status = overall_status(reports)
    notes = {**dict(view.notes), **base_notes}
    if settings.mode == "forward":
        notes["mode"] = "forward: the analytic side is the loss's JVP along each probe"
    if retry and not run.relative_step:
        notes["step_retried"] = True
    if widened:
        notes["step_widened"] = ", ".join(sorted(layout[s].name for s in widened))
    if run.narrowed:
        notes["step_narrowed"] = ", ".join(sorted(layout[s].name for s in run.narrowed))
    if run.extrapolated:
        notes["richardson"] = ", ".join(sorted(layout[s].name for s in run.extrapolated))
    if run.sparse_sampling:
        notes["coordinates"] = "half among elements with a non-zero analytic gradient"
    if run.jointly:
        notes["coordinates_jointly"] = ", ".join(sorted(layout[s].name for s in run.jointly))
    if outcome is not None:
        notes["strategy"] = "screen"
        notes["screen_evaluations"] = outcome.evaluations
        notes["screen_suspects"] = len(outcome.suspects)
    elif settings.strategy == "screen":
        notes["strategy"] = (
            "per-tensor (a half-precision gradient's measured spread is judged per tensor)"
            if np.any(run.spreads > 0.0) and not screens_with_spread(view.gradient_dtype)
            else "per-tensor (screening needs directions and a view that perturbs tensors jointly)"
        )
    return CheckReport(
        passed=status.passed,
        status=status,
        difference=overall,
        params=tuple(reports),
        evaluations=run.evaluations,
        gradient_calls=run.gradient_calls,
        duration_s=time.perf_counter() - started,
        notes=notes,
        coverage=None if selection is None else selection.coverage(layout),
        **base,  # type: ignore[arg-type]
    )


def _worst_owners(
    run: _Run, chosen: list[int], judgements: dict[int, _Judgement]
) -> dict[int, tuple[int, ...]]:
    """The ranks holding each tensor's worst element, for a view that knows (a sharded one)."""
    named = [s for s in chosen if judgements[s].worst_index is not None]
    items = []
    for s in named:
        index = judgements[s].worst_index
        assert index is not None
        shape = run.layout[s].shape
        items.append((s, int(np.ravel_multi_index(index, shape)) if shape else 0))
    ask = getattr(run.view, "element_owners", None)  # a FlatView's default answers None
    owners = ask(items) if ask is not None else None
    if owners is None:
        return {}
    return dict(zip(named, owners, strict=True))


def _check_step(run: _Run, chosen: list[int], eps: float) -> None:
    """Refuse a step the parameters' dtype cannot use, before any evaluation.

    Too small: below the smallest normal number, or below one unit in the last place of the
    largest coordinate (``x + eps`` rounds back to ``x`` there: that coordinate's difference is
    0/2eps). Too large: larger than the parameters themselves, where a difference measures a
    secant, not a derivative (and ``eps=1e300`` overflows the loss).
    """
    for s in chosen:
        segment = run.layout[s]
        if not segment.size:
            continue
        dtype = np.dtype(segment.dtype)
        largest = run.largest[s]
        tiny = float(np.finfo(dtype).tiny)  # type: ignore[type-var]  # a float dtype by contract
        lowest = max(tiny, float(np.spacing(dtype.type(largest))))
        highest = max(1.0, largest)
        if lowest <= eps <= highest:
            continue
        where = "is below" if eps < lowest else "is above"
        why = (
            f"the resolution of {dtype} at |x|={largest:.3g} (x + eps rounds back to x)"
            if eps < lowest
            else "the parameters' own magnitude (a secant, not a derivative; the loss may overflow)"
        )
        raise SettingsError(
            f"eps={eps:.3g} {where} {why} in tensor {segment.name}; usable steps for these "
            f"{dtype} parameters: {lowest:.2g} <= eps <= {highest:.3g}. Leave eps unset for the "
            f"dtype's own step ({default_step(dtype):.2g} x max(1, |x|))"
        )


def _screens(run: _Run, n_directions: int) -> bool:
    """Whether this check screens: asked for, with directions, on a view that allows it."""
    return (
        run.settings.strategy == "screen"
        and run.settings.mode == "reverse"  # joint probes read the gradient
        and n_directions > 0
        and run.settings.sample != "all"
        and bool(getattr(run.view, "joint_writes", False))
        # A half-precision gradient's measured spread is calibrated per tensor
        # (benchmarks/bench_mixed_precision.py); screened jointly, the spreads add in
        # quadrature and a 5% backward bug under autocast passed: probed per tensor instead.
        # A float32 gradient's spreads (~1e-4 of a tensor's gradient at worst) screen.
        and (screens_with_spread(run.view.gradient_dtype) or not bool(np.any(run.spreads > 0.0)))
    )


def _screened(
    run: _Run, s: int, coordinates: npt.NDArray[np.intp], e: Evidence, status: Status
) -> _Judgement:
    """The judgement of a tensor the screen cleared (pass or zero), no further evaluation."""
    p = run.probes
    segment = run.layout[s]
    worst = None
    if coordinates.size and s not in run.jointly:  # a joint reading bounds, names nothing
        gaps = [abs(p.numeric[int(i)] - p.analytic[int(i)]) for i in coordinates]
        i = int(coordinates[int(np.argmax(gaps))])
        worst = (segment.unravel(p.local[i]), p.analytic[i], p.numeric[i])
    if status is Status.ZERO:
        difference = e.zero_difference()
        hint = zero_hint(all_analytic_zero=not run.nonzero[s])
    else:
        difference = relative_difference(e.analytic, e.numeric)
        hint = ""
    return _Judgement(
        status=status,
        difference=difference,
        kinks=0,
        worst_index=None if worst is None else worst[0],
        worst_analytic=None if worst is None else worst[1],
        worst_numeric=None if worst is None else worst[2],
        hint=hint,
    )


def _pick_coordinates(
    run: _Run, chosen: list[int], selection: Selection | None, screening: bool = False
) -> dict[int, npt.NDArray[np.intp]]:
    """The coordinates each chosen tensor is probed at.

    Per-tensor probing takes at least one coordinate per tensor; screening a budget that does
    not grow with the number of tensors. Without a front door's selection, half of a tensor's
    coordinates are drawn among its elements with a non-zero analytic gradient, when it has
    both kinds (a sparse embedding: a uniform draw lands on zero rows, where a wrong gradient
    cannot show).
    """
    layout, settings = run.layout, run.settings
    sizes = [layout[s].size for s in chosen]
    if settings.sample == "all":
        counts = list(sizes)
    else:
        k = DEFAULT_COORDINATES if settings.sample is None else int(settings.sample)
        if settings.sample is None and not screening:
            k = max(k, len(sizes))
        counts = allocate(sizes, k, run.rng)
    if selection is not None:
        taken = [
            selection.coordinates(layout[s].name, size, count)
            for s, size, count in zip(chosen, sizes, counts, strict=True)
        ]
        return dict(zip(chosen, taken, strict=True))
    picks = {}
    for s, count in zip(chosen, counts, strict=True):
        size, nonzero = layout[s].size, int(run.nonzero[s])
        if 0 < count < size and 0 < nonzero < size:
            picks[s] = sample_among_nonzero(
                size, nonzero, functools.partial(run.values.nonzero_positions, s), count, run.rng
            )
            run.sparse_sampling = True
        else:
            picks[s] = sample_coordinates([size], [count], run.rng)[0]
    return picks


def _coordinates_jointly(
    run: _Run, chosen: list[int], picks: dict[int, npt.NDArray[np.intp]], scale: float
) -> dict[int, npt.NDArray[np.intp]]:
    """Every tensor's sampled coordinates, read in one joint probe where that is clean.

    A tensor whose jointly read coordinates do not pass (or read zero) is probed again one
    coordinate at a time (:mod:`gradguard.engine.joint_coordinates`).
    """
    items = [(s, int(local)) for s in chosen for local in picks[s]]
    readings = read_jointly(run, items) if len(items) > 1 else None
    if readings is None:
        return {s: _probe(run, s, picks[s]) for s in chosen}
    first = len(run.probes.segment)
    for (s, local), reading in zip(items, readings, strict=True):
        run.record(s, False, local, 1.0, reading)
    positions = np.arange(first, len(run.probes.segment), dtype=np.intp)
    owner = np.array([s for s, _ in items])
    members = {}
    for s in chosen:
        mine = positions[owner == s]
        if mine.size and classify(_evidence(run, mine, scale)) in (Status.PASS, Status.ZERO):
            members[s] = mine
            run.jointly.add(s)
        else:
            members[s] = _probe(run, s, picks[s])
    return members


def _probe(run: _Run, s: int, picks: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Probe one tensor at its coordinates and along its directions; the probes' positions."""
    first = len(run.probes.segment)
    for local in picks:
        run.record(s, False, int(local), 1.0, run.coordinate(s, int(local)))
    for k_dir, v in enumerate(run.directions[s]):
        run.record(s, True, k_dir, 1.0, run.direction(s, v))
    return np.arange(first, len(run.probes.segment), dtype=np.intp)


def _evidence(run: _Run, members: npt.NDArray[np.intp], scale: float) -> Evidence:
    p = run.probes
    analytic = np.array([p.analytic[i] for i in members])
    noise = np.array([p.roundoff[i] for i in members])
    if run.u_grad > run.u:
        # An analytic gradient less precise than the evaluations (float32 backprop against a
        # float64 evaluation) carries its own round-off: allow for it, relative to the probe
        # and to the tensor's typical gradient (sums that cancel lose digits).
        typical = float(np.sqrt(np.mean(np.square(analytic)))) if analytic.size else 0.0
        noise = noise + _GRADIENT_ULPS * run.u_grad * (np.abs(analytic) + typical)
    if run.spreads.any():
        noise = noise + SPREAD_FACTOR * run.spreads[[p.segment[i] for i in members]]
    e = Evidence(
        analytic,
        np.array([p.numeric[i] for i in members]),
        noise,
        run.tolerance,
        scale,
        max(run.u, _GRADIENT_FLOOR_SHARE * run.u_grad),  # the floor: cancelled float32 sums
        run.u,
    )
    e.floor = max(e.floor, run.grad_tiny)
    return e


@attrs.define
class _Look:
    """What a tensor's second look found, per probe."""

    keep: npt.NDArray[np.bool_]  # False: straddles a kink with no clean side (left out)
    smooth: npt.NDArray[np.bool_]  # True: no kink; ``measured`` holds its error
    measured: FloatArray  # |n(h) - n(h/2)| for smooth probes
    verified: int  # probes verified from a kink's clean side
    half: FloatArray  # n(h/2) for smooth probes (the Richardson third look starts from it)


def _judge_all(
    run: _Run, chosen: list[int], members_of: dict[int, npt.NDArray[np.intp]], scale: float
) -> dict[int, _Judgement]:
    """Decide the status of each tensor in ``chosen`` from its probes ``members_of[s]``.

    First look for all; a second look for those that fail or cannot see; the loss's own
    round-off measured from those second looks, pooled; then every tensor judged against all
    the noise it has (a tensor that passed its first look by luck under a far noisier loss
    than the a-priori model says becomes inconclusive).
    """
    evidence = {s: _evidence(run, members_of[s], scale) for s in chosen}
    looks = {
        s: _second_look(run, s, members_of[s], evidence[s])
        for s in chosen
        if classify(evidence[s]) not in (Status.PASS, Status.ZERO)
    }
    run.loss_noise = _pooled_loss_noise(run, looks, members_of)
    before = {s: evidence[s].restricted(np.ones(evidence[s].size, dtype=bool)) for s in looks}
    judged = {s: _conclude(run, s, members_of[s], evidence[s], looks.get(s)) for s in chosen}
    for s, look in looks.items():
        if judged[s].status is Status.INCONCLUSIVE and (look.half != 0.0).any():
            sharper = _third_look(run, s, members_of[s], before[s], look)
            judged[s] = _conclude(run, s, members_of[s], before[s], sharper)
            run.extrapolated.add(s)
    return judged


def _second_look(run: _Run, s: int, members: npt.NDArray[np.intp], e: Evidence) -> _Look:
    """Every probe of a tensor again at half the step: measured error, kinks."""
    p = run.probes
    tol = run.tolerance
    look = _Look(
        keep=np.ones(members.size, dtype=bool),
        smooth=np.zeros(members.size, dtype=bool),
        measured=np.zeros(members.size),
        verified=0,
        half=np.zeros(members.size),
    )
    for j, i in enumerate(members):
        roundoff = e.noise[j]
        first = _Difference(
            p.numeric[i], p.analytic[i], p.forward[i], p.backward[i], roundoff, p.span[i]
        )
        if p.is_direction[i]:
            half = run.direction(s, run.directions[s][p.local[i]], scale=0.5)
        else:
            half = run.coordinate(s, p.local[i], scale=0.5)
        error = abs(first.numeric - half.numeric)
        asymmetry = abs(first.forward - first.backward)
        half_asymmetry = abs(half.forward - half.backward)
        # Asymmetry that noise cannot produce: well above the measured noise (the change
        # between the two steps). The a-priori round-off bound is often 5-50x too wide, but a
        # quarter of it guards against a measured noise that is small by chance.
        noise_level = max(error, 0.25 * roundoff)
        smooth_limit = 8.0 * noise_level
        stuck = half_asymmetry > 0.75 * asymmetry and asymmetry > smooth_limit
        # Or the asymmetry shrinks far faster than a smooth function's, which halves with the
        # step: a kink lies between h/2 and h on one side.
        dropped = asymmetry - 2.0 * half_asymmetry > 8.0 * (roundoff + half.roundoff)
        if stuck or dropped:
            # A kink lies within the step. Verify from a clean side with a one-sided
            # Richardson estimate, exact to second order on the side without the kink.
            clean = [2.0 * half.forward - first.forward, 2.0 * half.backward - first.backward]
            best = min(clean, key=lambda c: abs(c - first.analytic))
            allowed = tol * (abs(first.analytic) + abs(best)) + e.floor
            if abs(best - first.analytic) <= allowed + 4.0 * NOISE_FACTOR * roundoff:
                e.numeric[j] = best
                e.noise[j] = 4.0 * roundoff
                look.verified += 1
            elif (narrow := _narrowed(run, s, int(i), roundoff)) is not None:
                e.numeric[j], e.noise[j], look.measured[j] = narrow
                look.smooth[j] = True  # measured, but no Richardson look from this step
                run.narrowed.add(s)
            else:
                look.keep[j] = False
        else:
            look.measured[j] = error
            look.smooth[j] = True
            look.half[j] = half.numeric
    return look


def _narrowed(run: _Run, s: int, i: int, roundoff: float) -> tuple[float, float, float] | None:
    """A probe that looked like a kink, again at 1/16 and 1/32 of its step: smooth there?

    A kink stays a kink at any step, but a smooth loss curved on the scale of the step (tan a
    thousandth from its pole, exp(1000 x)) looks like one: its one-sided differences stop
    halving with the step because the step is not small next to the distance to the
    singularity. Left out, such probes let a wrong tensor pass on its other probes. At a
    narrower step the loss is smooth again: the probe is judged there, with the change between
    the two narrow steps as its measured error and 16x the round-off. Float64 losses at a
    relative step only (round-off grows with the narrowing). Returns (numeric, noise,
    measured) or None where the probe still straddles a kink.
    """
    if not run.relative_step or np.dtype(run.view.loss_dtype) != np.float64:
        return None
    p = run.probes
    local = p.local[i]

    def at(scale: float) -> _Difference:
        if p.is_direction[i]:
            return run.direction(s, run.directions[s][local], scale=scale)
        return run.coordinate(s, local, scale=scale)

    narrow, narrower = at(1.0 / _NARROWER), at(0.5 / _NARROWER)
    asymmetry = abs(narrow.forward - narrow.backward)
    half_asymmetry = abs(narrower.forward - narrower.backward)
    noise = _NARROWER * roundoff
    error = abs(narrow.numeric - narrower.numeric)
    floor = max(error, 0.25 * noise)
    stuck = half_asymmetry > 0.75 * asymmetry and asymmetry > 8.0 * floor
    # A smooth loss's asymmetry halves with the step up to its higher-order terms, which at
    # this scale of curvature (exp(1000 x)) exceed the round-off; a kink between the two
    # narrow steps takes away a large part of it.
    shrink = asymmetry - 2.0 * half_asymmetry
    dropped = shrink > 8.0 * (narrow.roundoff + narrower.roundoff) and shrink > 0.1 * asymmetry
    if stuck or dropped:
        return None
    return narrow.numeric, noise, error


def _third_look(
    run: _Run, s: int, members: npt.NDArray[np.intp], e: Evidence, look: _Look
) -> _Look:
    """Smooth probes again at a quarter step: a Richardson estimate, exact to fourth order.

    For a tensor the second look left inconclusive by truncation (a strongly curved loss: tan
    near its pole, exp of a large argument), ``n(h)``, ``n(h/2)`` and ``n(h/4)`` give two
    Richardson estimates ``R(h) = (4 n(h/2) - n(h)) / 3`` and ``R(h/2)``; the later one is the
    numeric side and ``|R(h) - R(h/2)|`` its measured error (about 15 times its asymptotic
    error: a margin for a loss not yet in the asymptotic regime). Round-off grows with the
    combination (six times that of ``n(h)``), and is allowed for. Two evaluations per probe,
    spent only on tensors that could not be judged otherwise. ``e`` is updated in place.
    """
    p = run.probes
    measured = look.measured.copy()
    for j in np.flatnonzero(look.smooth & (look.half != 0.0)):
        i = int(members[j])
        if p.is_direction[i]:
            quarter = run.direction(s, run.directions[s][p.local[i]], scale=0.25)
        else:
            quarter = run.coordinate(s, p.local[i], scale=0.25)
        wide = (4.0 * look.half[j] - e.numeric[j]) / 3.0
        narrow = (4.0 * quarter.numeric - look.half[j]) / 3.0
        e.numeric[j] = narrow
        e.noise[j] = 6.0 * max(e.noise[j], _LOSS_NOISE_SIGMAS * run.loss_noise / p.span[i])
        measured[j] = abs(wide - narrow)
    return attrs.evolve(look, measured=measured)


def _pooled_loss_noise(
    run: _Run, looks: dict[int, _Look], members_of: dict[int, npt.NDArray[np.intp]]
) -> float:
    """The standard deviation of one loss evaluation's round-off, from the second looks.

    ``n(h) - n(h/2)`` of a smooth probe is truncation plus round-off; the round-off part has a
    standard deviation ``sqrt(10) s / (x+ - x-)`` for an evaluation round-off ``s`` (four
    evaluations, the half step's counting twice). Pooled over every smooth probe of the check
    (truncation only makes it larger). Losses not computed in float64 only: an
    ill-conditioned loss shows here: a float32
    cross-entropy through ``log(1 - sigmoid(z))`` carried 260 units of round-off, where the
    a-priori model assumes 4 (docs/numerics.md).
    """
    if np.dtype(run.view.loss_dtype) == np.float64:
        # A float64 loss follows the a-priori model on the zoo and the framework zoos, while
        # a smooth-looking probe near a kink would inflate the estimate for every tensor.
        return run.loss_noise
    p = run.probes
    scaled = [
        float(look.measured[j] * p.span[i])
        for s, look in looks.items()
        for j, i in ((int(j), int(members_of[s][j])) for j in np.flatnonzero(look.smooth))
        if p.numeric[i] != 0.0  # a loss that did not move (a dead unit) says nothing of noise
    ]
    if not scaled:
        return run.loss_noise
    # The root mean square, not the median: this round-off is heavy-tailed (most probes see a
    # few units, a few see jumps of hundreds when an intermediate crosses a rounding boundary).
    return max(run.loss_noise, math.sqrt(float(np.mean(np.square(scaled))) / 10.0))


def _conclude(
    run: _Run, s: int, members: npt.NDArray[np.intp], e: Evidence, look: _Look | None
) -> _Judgement:
    """A tensor's status with every noise it has: a-priori, the loss's measured, its own."""
    spans = np.array([run.probes.span[int(i)] for i in members])
    e.noise = np.maximum(e.noise, _LOSS_NOISE_SIGMAS * run.loss_noise / spans)
    if look is None:
        return _finish(run, s, members, e, (0, 0))
    e.noise[look.smooth] += look.measured[look.smooth]
    if not look.keep.any():
        return _Judgement(
            status=Status.NON_DIFFERENTIABLE,
            difference=relative_difference(e.analytic, e.numeric),
            kinks=members.size,
            worst_index=None,
            worst_analytic=None,
            worst_numeric=None,
            hint=(
                "every probe straddles a non-differentiable point (ReLU at 0, a max tie): "
                "not judged; check again at other parameters or with more samples"
            ),
        )
    excluded = int(members.size - look.keep.sum())
    return _finish(run, s, members[look.keep], e.restricted(look.keep), (look.verified, excluded))


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


def _mutation_report(
    run: _Run, chosen: list[int], drifted: list[int], base: dict[str, object], started: float
) -> CheckReport:
    """The loss changed its own parameters: every later probe would start from elsewhere."""
    names = ", ".join(repr(run.layout[s].name) for s in drifted[:5])
    more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
    hint = (
        f"the loss modifies its parameters: {names}{more} changed while it ran, with nothing "
        "written to them by the check (an in-place update, an optimizer step or a statistic "
        "kept in a parameter inside the loss?). A loss must only read its parameters: move "
        "the update out of it (the check put the values back), then check again"
    )
    return _unjudged_report(run, chosen, base, started, hint, set(drifted))


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
    return _unjudged_report(run, chosen, base, started, hint, set())


def _unjudged_report(
    run: _Run,
    chosen: list[int],
    base: dict[str, object],
    started: float,
    hint: str,
    named: set[int],
) -> CheckReport:
    """A NONDETERMINISTIC report: no tensor judged; the tensors in ``named`` carry the hint."""
    reports = tuple(
        ParamReport(
            name=run.layout[s].name,
            shape=run.layout[s].shape,
            dtype=str(run.layout[s].dtype),
            status=Status.NONDETERMINISTIC,
            difference=math.nan,
            tolerance=run.tolerance,
            coordinates=0,
            directions=0,
            hint=hint if s in named else "",
        )
        for s in chosen
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


def _retry_with_dtype_step(
    run: _Run,
    retry: list[int],
    picks: dict[int, npt.NDArray[np.intp]],
    scale: float,
    before: dict[int, _Judgement],
) -> dict[int, _Judgement]:
    """Probe tensors again with the dtype's own step after the user's could not see."""
    user_h = run.h
    step = default_step(run.view.loss_dtype)
    run.h, run.relative_step = step, True
    try:
        members_of = {s: _probe(run, s, picks[s]) for s in retry}
        retried = _judge_all(run, retry, members_of, scale)
    finally:
        run.h, run.relative_step = user_h, False
    said = (
        f"eps={user_h:.3g} could not resolve the tolerance in {run.view.loss_dtype} "
        f"(inconclusive at that step); retried with the dtype's step {step:.2g} x max(1, |x|)"
    )
    return {
        s: attrs.evolve(j, hint=f"{said}: {j.hint}" if j.hint else said) for s, j in retried.items()
    }


def _widen_step(
    run: _Run,
    chosen: list[int],
    picks: dict[int, npt.NDArray[np.intp]],
    scale: float,
    judgements: dict[int, _Judgement],
) -> dict[int, _Judgement]:
    """Probe again, with a wider step, the tensors whose round-off hid the tolerance.

    Round-off in a central difference falls as 1/h, truncation grows as h**2, so a tensor whose
    gradient is small next to the loss (a branch behind a LayerScale of 1e-6: its probes see
    ~1e-4 of relative round-off at the dtype's step) is often judged exactly at a step a few
    hundred times wider. The step grows by what the noise asks for (a power of two, at most
    ``_WIDEST`` times, and the relative step at most ``_WIDEST_STEP``); the second look at
    that step measures the truncation it adds, so a curved tensor stays inconclusive rather
    than failing. Default steps only (a user's eps is the user's, retried at the dtype's).
    """
    if not run.relative_step:
        return {}
    factors = {}
    for s in chosen:
        j = judgements[s]
        if j.status is not Status.INCONCLUSIVE or j.reachable is None or j.kinks:
            continue
        want = 2.0 * j.reachable / run.tolerance
        factor = 2.0 ** math.ceil(math.log2(max(want, 2.0)))
        factor = min(factor, _WIDEST, _WIDEST_STEP / run.h)
        if factor >= 2.0:
            factors[s] = factor
    widened: dict[int, _Judgement] = {}
    h = run.h
    try:
        for s, factor in factors.items():
            run.h = h * factor
            members = {s: _probe(run, s, picks[s])}
            j = _judge_all(run, [s], members, scale)[s]
            said = f"judged at a {factor:g}x wider step ({run.h:.2g} x max(1, |x|)): round-off"
            said += " hid the tolerance at the dtype's step"
            widened[s] = attrs.evolve(j, hint=f"{said}; {j.hint}" if j.hint else said)
    finally:
        run.h = h
    return widened


def _finish(
    run: _Run,
    s: int,
    members: npt.NDArray[np.intp],
    e: Evidence,
    kinks: tuple[int, int],
) -> _Judgement:
    """Name the worst element and write the hint, localizing a failure if needed."""
    p = run.probes
    segment = run.layout[s]
    status = classify(e)
    if status is Status.FAIL and _unresolved_by_a_small_step(run, members, e):
        status = Status.INCONCLUSIVE
    is_direction = np.array([p.is_direction[i] for i in members], dtype=bool)
    gap = np.abs(e.numeric - e.analytic)
    allowed = allowance(e)
    coordinate_rows = np.flatnonzero(~is_direction)
    worst: tuple[tuple[int, ...], float, float] | None = None
    if coordinate_rows.size:
        j = int(coordinate_rows[np.argmax(gap[coordinate_rows])])
        local = p.local[members[j]]
        worst = (segment.unravel(local), float(e.analytic[j]), float(e.numeric[j]))
    confined = None
    if status is Status.FAIL:
        coordinate_fails = bool(np.any(gap[coordinate_rows] > allowed[coordinate_rows]))
        direction_rows = np.flatnonzero(is_direction)
        if direction_rows.size and segment.size > 1:
            j = int(direction_rows[np.argmax(gap[direction_rows] - allowed[direction_rows])])
            run.bisected.add(s)
            found = _bisect(run, s, run.directions[s][p.local[members[j]]])
            if found.flat is not None and _agrees_outside(run, s, found.flat, e):
                confined = found.confined
            if not coordinate_fails:
                worst = found.element
    verified, excluded = kinks
    difference = relative_difference(e.analytic, e.numeric)
    reachable: float | None = None
    notes = []
    if verified:
        notes.append(f"{_probes(verified)} straddled a kink, verified from its clean side")
    if excluded:
        notes.append(f"{_probes(excluded)} straddled a kink and were left out")
    if status is Status.FAIL:
        hint = diagnose_failure(e, confined=confined)
    elif status is Status.ZERO:
        difference = e.zero_difference()
        hint = zero_hint(all_analytic_zero=not run.nonzero[s])
    elif status is Status.INCONCLUSIVE and _unresolved_by_a_small_step(run, members, e):
        hint = (
            f"the loss did not change at all when these elements moved by eps={run.h:.3g}: "
            f"the step is below what the {run.view.loss_dtype} loss resolves here"
        )
    elif status is Status.INCONCLUSIVE and blinded_by_spread(e, float(run.spreads[s])):
        # No step helps: the analytic gradient's own rounding is what hides the tolerance.
        hint = spread_hint(e, float(run.spreads[s]), str(run.view.gradient_dtype))
    elif status is Status.INCONCLUSIVE:
        hint = _inconclusive_hint(run, e)
        reachable = _reachable(e)
    else:
        hint = ""
    if notes:
        hint = "; ".join([*notes, hint] if hint else notes)
    return _Judgement(
        status=status,
        difference=difference,
        kinks=verified + excluded,
        worst_index=None if worst is None else worst[0],
        worst_analytic=None if worst is None else worst[1],
        worst_numeric=None if worst is None else worst[2],
        hint=hint,
        reachable=reachable,
    )


def _reachable(e: Evidence) -> float:
    """The smallest tolerance an inconclusive tensor's noise could judge."""
    signal = float(np.linalg.norm(e.analytic) + np.linalg.norm(e.numeric)) or e.scale
    return e.noise_allowance() / (BLIND_FACTOR * signal) if signal > 0.0 else math.inf


def _unresolved_by_a_small_step(run: _Run, members: npt.NDArray[np.intp], e: Evidence) -> bool:
    """Whether a failure rests on probes where the loss did not move at all under a user's step.

    ``J(x+h)``, ``J(x)`` and ``J(x-h)`` within two units of round-off of each other while the
    analytic side says they should differ by more: either the loss
    ignores these elements (a real bug, seen at any step), or it is flat at the scale of a
    step below the dtype's own (a float32 ``log(1 - sigmoid(z))`` whose argument rounds to the
    same value). The dtype's step tells them apart: the tensor is retried there.
    """
    if run.relative_step:
        return False
    p = run.probes
    resolution = 2.0 * run.u * abs(run.loss0) / run.h  # two units of round-off of J, per step
    flat = np.array([max(abs(p.forward[i]), abs(p.backward[i])) <= resolution for i in members])
    return bool(np.any(flat & (np.abs(e.analytic - e.numeric) > allowance(e))))


def _inconclusive_hint(run: _Run, e: Evidence) -> str:
    """Why the finite differences could not see, and what would let them."""
    dtype = run.view.loss_dtype
    noise = e.noise_allowance()
    reachable = _reachable(e)
    ratio = abs(run.loss0) / e.scale if e.scale > 0.0 else math.inf
    parts = [
        f"finite-difference noise ({noise:.2g}) exceeds the disagreement tolerance "
        f"{run.tolerance:.2g} names; the smallest tolerance this step can judge is ~{reachable:.1g}"
    ]
    if np.dtype(dtype) != np.float64:
        parts.append(f"evaluate the loss in float64 ({dtype} round-off is the limit)")
    if ratio > 1e3:
        parts.append(
            f"the loss ({run.loss0:.3g}) is large next to its gradient: subtract its constant "
            "part, or use a mean instead of a sum"
        )
    if not run.relative_step:
        parts.append(f"leave eps unset for the dtype's step ({default_step(dtype):.2g})")
    parts.append(f"or pass tolerance>={reachable:.1g}")
    return "; ".join(parts)


def _name_arrangement_mistakes(
    run: _Run,
    judgements: dict[int, _Judgement],
    members_of: dict[int, npt.NDArray[np.intp]],
    scale: float,
) -> dict[int, _Judgement]:
    """Say so when a failing tensor's gradient is another tensor's, or its own transposed.

    No evaluation: the other arrangement's analytic values along the tensor's own probes are
    compared with its numeric values, which are right whatever the gradient code did.
    """
    layout = run.layout
    failing = [s for s, j in judgements.items() if j.status is Status.FAIL]
    for s in failing:
        members = members_of[s]
        # (message, the tensor whose gradient to read, read it transposed)
        candidates: list[tuple[str, int, bool]] = []
        shape = layout[s].shape
        for t in range(len(layout)):
            if t != s and layout[t].shape == shape:
                candidates.append(
                    (
                        f"the analytic gradient given for {layout[t].name} matches the finite "
                        f"differences of {layout[s].name}: gradients swapped between tensors "
                        "(a list or tuple in the wrong order?)",
                        t,
                        False,
                    )
                )
        if len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
            candidates.append(
                ("the gradient is transposed (analytic.T matches the finite differences)", s, True)
            )
        for message, t, transposed in candidates:
            values = np.array([_along(run, s, int(i), t, transposed) for i in members])
            e = _evidence(run, members, scale)
            e.analytic = values
            if classify(e) is Status.PASS and float(np.linalg.norm(values)) > 0.0:
                judgements[s] = attrs.evolve(judgements[s], hint=message)
                break
    return judgements


def _along(run: _Run, s: int, i: int, t: int, transposed: bool) -> float:
    """The derivative tensor ``t``'s gradient (transposed or not) implies along probe ``i`` of
    tensor ``s`` (of the same shape)."""
    p = run.probes
    if not p.is_direction[i]:
        where = np.array([p.local[i]], dtype=np.intp)
        return float(run.values.gradient_elements(t, where, transposed)[0])
    return run.values.gradient_dot(t, run.directions[s][p.local[i]], transposed)


def _probes(count: int) -> str:
    return f"{count} probe{'s' if count > 1 else ''}"


def _bisect(run: _Run, s: int, v: Direction) -> _Bisection:
    """Narrow a failing direction down to one element by halving its support.

    The discrepancy along a direction is the sum of the per-element errors it touches, so
    it follows the half that carries the larger share; each level costs two probes (one
    below the first level when screening: the other half is the parent's minus it). While
    one half carries nearly all of the discrepancy, the error is *confined* to it; the
    first level where both halves carry a real share ends the confined block (a whole
    wrong row ends there; a factor bug spread over the tensor ends at the top).
    """
    segment = run.layout[s]
    lo, hi = 0, segment.size  # the support, [lo, hi)
    block: tuple[int, int] | None = None
    # Screening infers the second half's discrepancy as the parent's minus the first half's
    # (the discrepancy is linear in the direction): one probe per level below the first.
    infer = run.screening
    parent: tuple[float, float] | None = None  # the chosen half's (discrepancy, noise)
    while hi - lo > 1:
        middle = lo + (hi - lo) // 2
        halves = ((lo, middle), (middle, hi))
        measured: list[tuple[float, float]] = []
        for k, (first, last) in enumerate(halves):
            if k == 1 and infer and parent is not None:
                probed = measured[0]
                measured.append((parent[0] - probed[0], math.hypot(parent[1], probed[1])))
                continue
            # The share of the unit direction's norm on this half.
            norm = math.sqrt((last - first) / segment.size)
            d = run.direction(s, v.restrict(first, last))
            measured.append((norm * (d.numeric - d.analytic), norm * d.roundoff))
        # Discrepancy per unit of the original direction, beyond what noise explains.
        shares = [max(0.0, abs(gap) - NOISE_FACTOR * noise) for gap, noise in measured]
        larger = int(np.argmax(shares))
        if block is None and shares[larger] < _CONFINED_SHARE * sum(shares):
            block = (lo, hi)
        lo, hi = halves[larger]
        parent = measured[larger]
    d = run.coordinate(s, lo)
    element = (segment.unravel(lo), d.analytic, d.numeric)
    if block is None:
        block = (lo, hi)
    if block[1] - block[0] > segment.size // 4:
        return _Bisection(element, None, None)
    first, last = block[0], block[1] - 1
    return _Bisection(element, (segment.unravel(first), segment.unravel(last)), (first, last))


class _Bisection(NamedTuple):
    element: tuple[tuple[int, ...], float, float]  # (index, analytic, numeric)
    confined: tuple[tuple[int, ...], tuple[int, ...]] | None  # first and last of the block
    flat: tuple[int, int] | None  # the block's first and last flat positions


def _agrees_outside(run: _Run, s: int, block: tuple[int, int], e: Evidence) -> bool:
    """Whether the element with the largest gradient outside a block agrees (two evaluations).

    Bisection follows where the discrepancy is largest; a whole-tensor factor bug is largest
    where the gradient is, so a block alone does not make an error confined. The largest
    gradient outside the block shows the same factor in that case, and agrees when the error
    truly is confined (one wrong row).
    """
    # With no gradient outside the block, any element there says whether the loss agrees
    # (a detached tensor's numeric side is not zero anywhere; a sparse one's is).
    local = run.values.largest_gradient_outside(s, block[0], block[1])
    if local is None:
        return True
    d = run.coordinate(s, local)
    one = Evidence(
        np.array([d.analytic]),
        np.array([d.numeric]),
        np.array([d.roundoff]),
        e.tolerance,
        e.scale,
        run.u,
    )
    return not bool(abs(d.numeric - d.analytic) > allowance(one)[0])
