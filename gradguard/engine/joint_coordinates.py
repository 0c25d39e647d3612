"""Sampled coordinates probed jointly: one pair of evaluations for all of them.

Screening (:mod:`gradguard.engine.screen`) makes the directions' cost independent of the
number of tensors; the sampled coordinates were then the largest fixed part of a passing
check (8 coordinates, 16 evaluations, against 4 for the joint directions). This module
moves every sampled element at once, each by its own coordinate step ``h_i`` (scaled down to
the median share where its gradient is large, so no one element's share swamps the others'),
with a random sign:

``(J(theta + D) - J(theta - D)) / 2`` against ``sum_i g_i d_i``, ``D = sum_i s_i w_i h_i e_i``.

**Attribution**, as in the screen: each coordinate is read as if the whole discrepancy were
its own, in the units of its own step (``numeric_i = g_i + s_i delta / span_i``), with the
joint round-off, the other coordinates' gradient round-off and measured spread likewise
scaled. A tensor whose coordinates pass (or read zero) that way keeps these readings: they
bound each element's error from above. A tensor whose coordinates do not (a wrong element, a
kink, or noise too large for this reading) has its coordinates probed again one by one, as
without this module, so a failing or doubtful element is always judged on its own
evaluations. Tensors the screen escalates are probed one by one likewise. ``docs/numerics.md``
("Coordinates probed jointly") has the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradguard.engine.numerics import GRADIENT_ULPS, Difference
from gradguard.engine.spread import SPREAD_FACTOR
from gradguard.errors import LossError

if TYPE_CHECKING:
    from gradguard.engine.check import _Run

__all__ = ["read_jointly"]

# The smallest fraction of its own step an element is moved by (a float32 element moved by
# 1e-6 of its step would round back to itself).
_LEAST_WEIGHT = 2.0**-10


def read_jointly(run: _Run, items: Sequence[tuple[int, int]]) -> list[Difference] | None:
    """Move every ``(tensor, element)`` of ``items`` at once; one attributed reading each.

    Two evaluations; none and ``None`` when a step rounds to nothing in an element's dtype.
    Every element is reset before returning, also when the loss raises.
    """
    values, view = run.values, run.view
    pairs = [values.element(s, local) for s, local in items]
    xs = np.array([x for x, _ in pairs], dtype=np.float64)
    gs = np.array([g for _, g in pairs], dtype=np.float64)
    relative = np.maximum(1.0, np.abs(xs)) if run.relative_step else np.ones(xs.size)
    steps = run.h * relative
    shares = np.abs(gs) * steps
    positive = shares[shares > 0.0]
    median = float(np.median(positive)) if positive.size else 0.0
    weights = np.where(shares > median, median / np.where(shares > 0.0, shares, 1.0), 1.0)
    weights = np.maximum(weights, _LEAST_WEIGHT) if median > 0.0 else np.ones(xs.size)
    signs = run.rng.integers(0, 2, size=xs.size) * 2 - 1
    moves = signs * weights * steps
    plus = np.empty(xs.size)
    minus = np.empty(xs.size)
    try:
        for k, (s, local) in enumerate(items):
            plus[k] = view.write_element(s, local, float(xs[k] + moves[k]))
        for k, (s, local) in enumerate(items):
            minus[k] = view.write_element(s, local, float(xs[k] - moves[k]))
        if np.any(plus == xs) or np.any(minus == xs):
            return None
        for k, (s, local) in enumerate(items):
            view.write_element(s, local, float(plus[k]))
        j_plus = _evaluate(run, len(items), +1)
        for k, (s, local) in enumerate(items):
            minus[k] = view.write_element(s, local, float(xs[k] - moves[k]))
        j_minus = _evaluate(run, len(items), -1)
    finally:
        for s, local in items:
            view.reset_element(s, local)
    # Signed steps actually stored (rounded to each tensor's dtype).
    d_plus, d_minus = plus - xs, xs - minus
    signed_span = d_plus + d_minus  # sign s_i included
    span = np.abs(signed_span)
    delta = (j_plus - j_minus) - float(np.dot(gs, signed_span))
    forward_gap = (j_plus - run.loss0) - float(np.dot(gs, d_plus))
    backward_gap = (run.loss0 - j_minus) - float(np.dot(gs, d_minus))
    # The other coordinates' gradient round-off and spread, as independent errors.
    extra = np.zeros(xs.size)
    if run.u_grad > run.u:
        typical = np.array(
            [
                math.sqrt(float(run.grad_squares[s]) / max(1, run.layout[s].size))
                if len(run.grad_squares)
                else 0.0
                for s, _ in items
            ]
        )
        extra += np.square(GRADIENT_ULPS * run.u_grad * (np.abs(gs) + typical) * span)
    if run.spreads.any():
        extra += np.square(SPREAD_FACTOR * run.spreads[[s for s, _ in items]] * span)
    others = np.sqrt(np.maximum(float(np.sum(extra)) - extra, 0.0))
    loss_noise = run.noise(j_plus, j_minus)
    readings = []
    for k in range(xs.size):
        sign = 1.0 if signed_span[k] >= 0.0 else -1.0
        readings.append(
            Difference(
                numeric=float(gs[k] + sign * delta / span[k]),
                analytic=float(gs[k]),
                forward=float(gs[k] + sign * forward_gap / abs(d_plus[k])),
                backward=float(gs[k] + sign * backward_gap / abs(d_minus[k])),
                roundoff=float((loss_noise + others[k]) / span[k]),
                span=float(span[k]),
            )
        )
    return readings


def _evaluate(run: _Run, count: int, sign: int) -> float:
    value = run.view.evaluate()
    run.evaluations += 1
    if not math.isfinite(value):
        raise LossError(
            f"the loss is {value} when the {count} sampled coordinates are perturbed jointly "
            f"by {'+' if sign > 0 else '-'}{run.h:.3g} x their scale; gradients can only be "
            "checked where the loss is finite (check the inputs, a log of 0, an overflow in "
            "exp)"
        )
    return value
