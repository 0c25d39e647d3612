"""Second order: Hessian-vector products of the loss against differences of its gradient.

``check(loss, params, order=2)`` checks the *backward of the backward*: a custom autograd
Function whose gradient is right but whose double backward is wrong (an intermediate saved
detached), a ``tf.custom_gradient`` whose gradient function is not differentiable, a
``jax.custom_vjp`` whose ``bwd`` drops a term. Pure NumPy on flat vectors; the view computes
(``FlatView.hvp``, ``FlatView.gradient_at`` in :mod:`gradguard.kit.contract`).

The stages:

1. *Directions.* ``K`` random joint directions ``w`` over the checked tensors (each tensor's
   share a Rademacher vector of unit norm, scaled like the first-order step by
   ``max(1, rms(x))``): every element of every tensor takes part.
2. *Probes.* Per direction, the analytic ``H w`` (one Hessian-vector product) and the central
   difference of the analytic gradient, ``(g(x + h w) - g(x - h w)) / 2h`` (two gradient
   evaluations): a whole vector on each side, so each tensor's block of ``H w`` is compared
   element by element, and a wrong block names its tensor and its worst element for free.
3. *First look* (:mod:`gradguard.engine.verdict`): each tensor's block against the tolerance
   plus an a-priori round-off of the gradient differences (``_GRADIENT_ULPS`` units of the
   dtype's round-off, relative to the element and to the block's typical gradient).
4. *Second look*, for blocks that fail or cannot see: every direction again at half the step.
   The change between the two steps measures the finite-difference error (added to the
   noise); elements whose one-sided differences disagree at both steps straddle a kink (a
   ReLU's gradient jumps) and are left out.
5. *Localization*, when a block fails: one probe per checked tensor, along the first
   direction restricted to that tensor, says which mixed block ``d2L / dt ds`` is wrong.

Cost: ``K`` Hessian-vector products and ``2K`` gradient evaluations (``4K`` and ``2K`` with a
second look), whatever the number of tensors, plus ``T`` and ``2T`` to localize a failure.
``docs/numerics.md`` ("Second order") has the noise measurements behind the constants.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from gradguard.engine.check import Settings, _chosen_segments
from gradguard.engine.layout import Layout
from gradguard.engine.numerics import (
    default_step,
    default_tolerance,
    relative_difference,
    unit_roundoff,
)
from gradguard.engine.sampling import rademacher_signs
from gradguard.engine.selection import Selection
from gradguard.engine.verdict import Evidence, allowance, classify, fails
from gradguard.errors import LossError, SettingsError
from gradguard.results import CheckReport, ParamReport, Status, overall_status

if TYPE_CHECKING:
    from gradguard.kit.contract import FlatView

__all__ = ["run_second_order"]

FloatArray = npt.NDArray[np.float64]

# A-priori round-off of one analytic gradient element, in units of the dtype's round-off times
# (|g_i| + the block's RMS gradient): backprop sums that cancel lose digits relative to their
# terms, not to the result. Measured on the test models (docs/numerics.md, "Second order"):
# the largest |n - a| of a correct block is below 1 such unit in float64 and float32.
_GRADIENT_ULPS = 8.0
# A loss that changes by more than this many units of round-off between two evaluations at
# the same point is nondeterministic (as in the first-order check).
_NONDETERMINISM_ULPS = 64.0
# One-sided differences of the gradient that disagree by more than this many noise levels at
# both steps straddle a kink (a ReLU's gradient jumps); the element is left out.
_KINK_LEVELS = 8.0
# A wrong block whose analytic side is below this share of the differences' (norm-wise)
# misses a term: a backward that autograd cannot differentiate.
_MISSING_SHARE = 0.1


class _Probe(NamedTuple):
    """One direction: both sides of ``H w`` and the one-sided differences, flat."""

    analytic: FloatArray
    numeric: FloatArray
    noise: FloatArray
    forward: FloatArray
    backward: FloatArray


class _Run:
    """The state of one second-order check."""

    def __init__(self, view: FlatView, settings: Settings, seed: int) -> None:
        self.view = view
        self.layout = view.layout
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.gradient_calls = 0
        self.hvp_calls = 0
        self.u = 0.0
        self.h = 0.0
        self.g0: FloatArray = np.empty(0)
        self.typical: FloatArray = np.empty(0)  # per element: its block's RMS gradient

    def gradient(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        self.gradient_calls += 1
        g, taken = self.view.gradient_at(displacement)
        if not np.all(np.isfinite(g)):
            raise LossError(
                "the analytic gradient is not finite at a point the second-order check "
                f"evaluates (a step of {float(np.max(np.abs(displacement))):.3g}); check the "
                "loss there, or pass a smaller eps"
            )
        return g, taken

    def probe(self, w: FloatArray, scale: float = 1.0) -> _Probe:
        step = self.h * scale
        g_plus, d_plus = self.gradient(step * w)
        g_minus, d_minus = self.gradient(-step * w)
        # The direction actually taken once the perturbed values were rounded to their dtype.
        taken = (d_plus - d_minus) / (2.0 * step)
        self.hvp_calls += 1
        analytic = np.asarray(self.view.hvp(taken), dtype=np.float64)
        numeric = (g_plus - g_minus) / (2.0 * step)
        roundoff = _GRADIENT_ULPS * self.u * (np.abs(g_plus) + np.abs(g_minus) + 2 * self.typical)
        return _Probe(
            analytic=analytic,
            numeric=numeric,
            noise=roundoff / (2.0 * step),
            forward=(g_plus - self.g0) / step,
            backward=(self.g0 - g_minus) / step,
        )


class _Block(NamedTuple):
    """One tensor's judgement."""

    status: Status
    difference: float
    kinks: int
    worst: tuple[tuple[int, ...], float, float] | None
    evidence: Evidence | None


def run_second_order(
    view: FlatView, settings: Settings, selection: Selection | None = None
) -> CheckReport:
    """Check the analytic Hessian-vector products of the loss on an open view.

    Args:
        view: An open view whose adapter implements ``gradient_at`` and ``hvp``.
        settings: The check's options (``order=2``; ``sample`` does not apply).
        selection: A front door's choice of tensors, or ``None`` (``settings.tensors``).

    Raises:
        SettingsError: ``directions=0``, or ``tensors`` names an unknown tensor.
        LossError: the loss or its gradient is not finite where it is evaluated.
    """
    started = time.perf_counter()
    seed = settings.seed if settings.seed is not None else secrets.randbits(32)
    run = _Run(view, settings, seed)
    layout = view.layout
    chosen = _chosen_segments(layout, settings.tensors)
    if selection is not None:
        chosen = list(selection.tensors(layout, chosen))
    n_directions = settings.resolved_directions
    if n_directions == 0:
        raise SettingsError("order=2 needs at least one direction: directions=1 or more")
    originals = [view.original(s) for s in range(len(layout))]

    loss_a = view.evaluate()
    if not math.isfinite(loss_a):
        raise LossError(f"the loss is {loss_a} at the unperturbed parameters")
    loss_dtype = view.loss_dtype
    run.u = unit_roundoff(loss_dtype)
    relative = settings.eps is None
    run.h = float(settings.eps) if settings.eps is not None else default_step(loss_dtype)
    tolerance = (
        float(settings.tolerance)
        if settings.tolerance is not None
        else default_tolerance(loss_dtype)
    )
    loss_b = view.evaluate()
    base = {
        "eps": run.h,
        "eps_relative": relative,
        "seed": seed,
        "adapter": view.adapter,
        "dtype": str(loss_dtype),
        "sample": None,
        "loss": loss_a,
        "tolerance": tolerance,
    }
    jitter = abs(loss_b - loss_a)
    if jitter > _NONDETERMINISM_ULPS * run.u * max(abs(loss_a), abs(loss_b)):
        return _nondeterministic(run, chosen, base, started, loss_a, loss_b)

    run.g0, _ = run.gradient(np.zeros(layout.size))
    run.typical = np.zeros(layout.size)
    for segment in layout:
        block = run.g0[segment.offset : segment.stop]
        run.typical[segment.offset : segment.stop] = math.sqrt(float(np.mean(np.square(block))))

    directions = [_direction(run, chosen, originals, relative) for _ in range(n_directions)]
    probes = [run.probe(w) for w in directions]
    analytic_all = np.concatenate([p.analytic for p in probes])
    scale = math.sqrt(float(np.mean(np.square(analytic_all)))) if analytic_all.size else 0.0

    first = {s: _evidence(run, s, probes, tolerance, scale) for s in chosen}
    unsure = [s for s in chosen if classify(first[s]) not in (Status.PASS, Status.ZERO)]
    blocks: dict[int, _Block] = {}
    halves = [run.probe(w, 0.5) for w in directions] if unsure else []
    for s in chosen:
        blocks[s] = _judge(run, s, probes, halves if s in unsure else [], first[s])

    failing = [s for s in chosen if blocks[s].status is Status.FAIL]
    hints = _localize(run, chosen, failing, directions[0], blocks) if failing else {}

    reports = []
    for s in chosen:
        segment = layout[s]
        b = blocks[s]
        reports.append(
            ParamReport(
                name=segment.name,
                shape=segment.shape,
                dtype=str(segment.dtype),
                status=b.status,
                difference=b.difference,
                tolerance=tolerance,
                coordinates=0,
                directions=n_directions,
                kinks=b.kinks,
                worst_index=None if b.worst is None else b.worst[0],
                worst_analytic=None if b.worst is None else b.worst[1],
                worst_numeric=None if b.worst is None else b.worst[2],
                hint=hints.get(s, _default_hint(b)),
                judged_by="probed",
                evaluations=0,
            )
        )
    numeric_all = np.concatenate([p.numeric for p in probes])
    picked = np.concatenate(
        [_positions(layout, chosen) + k * layout.size for k in range(len(probes))]
    )
    notes = dict(view.notes)
    notes.update(
        {
            "order": 2,
            "hvp_calls": run.hvp_calls,
            "second_look": ", ".join(layout[s].name for s in unsure) if unsure else "none",
        }
    )
    status = overall_status(reports)
    return CheckReport(
        passed=status.passed,
        status=status,
        difference=relative_difference(analytic_all[picked], numeric_all[picked]),
        params=tuple(reports),
        evaluations=2,
        gradient_calls=run.gradient_calls,
        duration_s=time.perf_counter() - started,
        notes=notes,
        **base,  # type: ignore[arg-type]
    )


def _positions(layout: Layout, chosen: list[int]) -> npt.NDArray[np.intp]:
    parts = [np.arange(layout[s].offset, layout[s].stop, dtype=np.intp) for s in chosen]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)


def _direction(
    run: _Run, chosen: list[int], originals: list[FloatArray], relative: bool
) -> FloatArray:
    """A joint direction: each chosen tensor's share a unit Rademacher vector, scaled."""
    w = np.zeros(run.layout.size)
    for s in chosen:
        segment = run.layout[s]
        x = originals[s]
        rms = math.sqrt(float(np.dot(x, x)) / x.size) if x.size else 0.0
        signs = rademacher_signs(segment.size, run.rng).astype(np.float64)
        share = max(1.0, rms) if relative else 1.0
        w[segment.offset : segment.stop] = signs * (share / math.sqrt(segment.size))
    return w


def _evidence(run: _Run, s: int, probes: list[_Probe], tolerance: float, scale: float) -> Evidence:
    segment = run.layout[s]
    part = slice(segment.offset, segment.stop)
    return Evidence(
        np.concatenate([p.analytic[part] for p in probes]),
        np.concatenate([p.numeric[part] for p in probes]),
        np.concatenate([p.noise[part] for p in probes]),
        tolerance,
        scale,
        run.u,
    )


def _judge(run: _Run, s: int, probes: list[_Probe], halves: list[_Probe], e: Evidence) -> _Block:
    """A block's status: the first look's, or the second look's with measured noise."""
    segment = run.layout[s]
    part = slice(segment.offset, segment.stop)
    keep = np.ones(e.size, dtype=bool)
    if halves:
        measured = np.concatenate(
            [
                np.abs((p.numeric[part] - p.analytic[part]) - (q.numeric[part] - q.analytic[part]))
                for p, q in zip(probes, halves, strict=True)
            ]
        )
        asymmetry = np.concatenate([np.abs(p.forward[part] - p.backward[part]) for p in probes])
        half_asymmetry = np.concatenate(
            [np.abs(q.forward[part] - q.backward[part]) for q in halves]
        )
        level = np.maximum(measured, 0.25 * e.noise) + e.floor
        kink = (half_asymmetry > 0.75 * asymmetry) & (asymmetry > _KINK_LEVELS * level)
        e.noise = e.noise + measured
        keep = ~kink
    kinks = int(e.size - keep.sum())
    if kinks == e.size:
        return _Block(Status.NON_DIFFERENTIABLE, math.nan, kinks, None, None)
    if kinks:
        e = e.restricted(keep)
    status = classify(e)
    difference = (
        e.zero_difference() if status is Status.ZERO else relative_difference(e.analytic, e.numeric)
    )
    # The worst element: the largest disagreement beyond its allowance, over every direction.
    local_of = np.tile(np.arange(segment.size), len(probes))[keep]
    j = int(np.argmax(np.abs(e.numeric - e.analytic) - allowance(e)))
    worst = (segment.unravel(int(local_of[j])), float(e.analytic[j]), float(e.numeric[j]))
    return _Block(status, difference, kinks, worst, e)


def _localize(
    run: _Run,
    chosen: list[int],
    failing: list[int],
    w: FloatArray,
    blocks: dict[int, _Block],
) -> dict[int, str]:
    """Which tensors' directions carry each failing block's error: one probe per tensor."""
    layout = run.layout
    wrong: dict[int, list[str]] = {t: [] for t in failing}
    if len(chosen) > 1:
        for s in chosen:
            segment = layout[s]
            restricted = np.zeros_like(w)
            restricted[segment.offset : segment.stop] = w[segment.offset : segment.stop]
            probe = run.probe(restricted)
            for t in failing:
                reference = blocks[t].evidence
                assert reference is not None
                e = _evidence(run, t, [probe], reference.tolerance, reference.scale)
                if fails(e):
                    wrong[t].append(segment.name)
    hints = {}
    for t in failing:
        name = layout[t].name
        judged = blocks[t].evidence
        assert judged is not None
        missing = float(np.linalg.norm(judged.analytic)) < _MISSING_SHARE * float(
            np.linalg.norm(judged.numeric)
        )
        if wrong[t]:
            pairs = ", ".join(f"H[{name}, {other}]" for other in wrong[t])
            where = f"wrong Hessian blocks: {pairs}"
        else:
            where = f"the second derivatives of the loss through {name} are wrong"
        why = (
            "the analytic H v is ~0 where differences of the gradient are not: the backward "
            "is not differentiable (an intermediate saved detached, computed under no_grad or "
            "outside the framework)"
            if missing
            else "the gradient is right at each point but its own derivative (double backward, "
            "a custom gradient's backward-of-backward) disagrees with differences of it"
        )
        hints[t] = f"{where}; {why}"
    return hints


def _default_hint(b: _Block) -> str:
    if b.status is Status.NON_DIFFERENTIABLE:
        return "every element of H v straddles a kink (the gradient jumps: ReLU, max): not judged"
    if b.kinks:
        return f"{b.kinks} element(s) of H v straddled a kink and were left out"
    if b.status is Status.INCONCLUSIVE:
        return (
            "the noise of the gradient differences exceeds the disagreement the tolerance "
            "names: evaluate in float64, or pass a larger tolerance"
        )
    if b.status is Status.ZERO:
        return "H v ~0 on both sides: the loss is linear (or constant) in this tensor here"
    return ""


def _nondeterministic(
    run: _Run,
    chosen: list[int],
    base: dict[str, object],
    started: float,
    loss_a: float,
    loss_b: float,
) -> CheckReport:
    hint = (
        f"the loss gave {loss_a!r} and then {loss_b!r} at the same parameters: make it "
        "repeatable (a fixed seed inside the loss, or inference mode) and check again"
    )
    reports = tuple(
        ParamReport(
            name=run.layout[s].name,
            shape=run.layout[s].shape,
            dtype=str(run.layout[s].dtype),
            status=Status.NONDETERMINISTIC,
            difference=math.nan,
            tolerance=float(base["tolerance"]),  # type: ignore[arg-type]
            coordinates=0,
            directions=0,
        )
        for s in chosen
    )
    return CheckReport(
        passed=False,
        status=Status.NONDETERMINISTIC,
        difference=math.nan,
        params=reports,
        evaluations=2,
        gradient_calls=run.gradient_calls,
        duration_s=time.perf_counter() - started,
        hint=hint,
        notes={**dict(run.view.notes), "order": 2},
        **base,  # type: ignore[arg-type]
    )
