"""Joint screening: every tensor probed at once; probes spent only where the screen is suspect.

A *joint probe* perturbs every screened tensor at once along one random direction
``D = sum_t d_t`` and compares ``(J(theta + D) - J(theta - D)) / 2`` with ``g . D``. Its cost is
two evaluations whatever the number of tensors. Each tensor's part is shaped so that its share
of ``g . D`` is comparable to the others':

- ``d_t = alpha_t * step_t * u_t``, with ``u_t`` a Rademacher unit vector over the tensor (the
  one, of 4 drawn, along which ``|g_t . u_t|`` is largest: a share near 0 by chance would leave
  the tensor unresolved) and ``step_t`` the step a per-tensor probe of ``t`` would take;
- ``alpha_t = min(1, m / (step_t ||g_t|| / sqrt(n_t)))`` with ``m`` the median typical share at
  full step: tensors with a large gradient are scaled down to the median, the others keep
  their own full step (the floor: a tensor whose gradient is ~0 is perturbed as its own probe
  would be, not blown up by ``1 / |g_t|``);
- the shares' signs stay random. Aligning them (every share positive) made the round-off of a
  float32 gradient add up coherently: backprop through 500 residual layers leaves each tensor a
  few units off with a common bias, which over 1,000 aligned shares outweighed any one
  tensor's tolerance and escalated every tensor. With random signs those errors add as
  independent terms whatever their correlation. Each tensor is judged on its own share, so a
  sum that cancels costs nothing.

**Attribution.** The screen's discrepancy ``delta = numeric - analytic`` is the sum of every
tensor's error along its part. For tensor ``t`` the screen is read as if the whole discrepancy
were its own, in the units of its own unit direction (divided by ``alpha_t step_t``): analytic
``|g_t . u_t|``, numeric ``|g_t . u_t| + delta / (alpha_t step_t)``, noise likewise scaled. The
verdict's own rules (:func:`gradguard.engine.verdict.classify`) then say whether the screen
clears the tensor (pass or zero), could not see it at the tolerance (inconclusive: the tensor is
probed on its own), or fails (something somewhere is wrong). A wrong tensor's error shows in
every tensor's attributed evidence, so a failing screen is followed by *group testing*: the
failing probe restricted to half of a group, the other half's discrepancy being the group's
minus that half's (two evaluations per level), down to single tensors. Those *suspects* and
every tensor the screen could not clear go to the per-tensor probes and element bisection of
:mod:`gradguard.engine.check`; the others are judged again on the screen's discrepancy minus the
suspects' measured shares. Tensors a round cannot resolve (inconclusive: their share is small
next to the others' noise) are screened again jointly, on their own, with fresh directions;
after at most 4 rounds, or when a round resolves nothing, the rest are probed one by one.

**Noise.** A-priori round-off of the two evaluations (as for every probe), plus for an analytic
gradient less precise than the loss (float32 backprop, float64 shadow) the gradient's round-off
over all tensors: 16 units of it times each tensor's typical share, added as independent
errors (root sum of squares; the signs are random). A loss not computed in
float64 also gets a second look at half the step for every joint probe; the change between the
two steps (truncation and measured round-off) joins the noise.

``docs/numerics.md`` has the measurements behind the constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
import numpy.typing as npt

from gradguard.engine.directions import Direction
from gradguard.engine.spread import joint_spread
from gradguard.engine.verdict import Evidence, allowance, classify
from gradguard.errors import LossError
from gradguard.results import Status

if TYPE_CHECKING:
    from gradguard.engine.check import _Run

__all__ = ["ScreenOutcome", "gradient_dots", "gradient_norms", "screen"]

FloatArray = npt.NDArray[np.float64]

# The round-off of a less precise analytic gradient along a joint direction, in units of its
# dtype's round-off times the root sum of squares of the tensors' typical shares. The signs of
# the shares are random, so the gradient's errors add as independent terms whatever their
# correlation (float32 backprop through 500 residual layers: 2-13 units per tensor, with a
# common bias that sign-aligned shares added up coherently). See docs/numerics.md.
_SCREEN_GRADIENT_ULPS = 16.0
# A tensor whose share at full step is below this fraction of the median share is treated as
# having no gradient along its direction: full step.
_SHARE_FLOOR = 1e-12
# Random sign vectors drawn per tensor and joint direction; the one with the largest share
# is kept (a tensor's share below ~0.2 of its typical size is then rare: 1e-3 of draws).
_CANDIDATES = 4
# Rounds of joint probes at most: each screens again, with fresh directions, the tensors the
# previous round could not resolve (their joint noise shrinks with their number).
_ROUNDS = 4


def gradient_norms(
    run: _Run, tensors: Sequence[int], squares: Mapping[int, float]
) -> dict[int, float]:
    """``||g_t||`` for each tensor ``t`` of ``tensors``.

    Exact, from the per-tensor sums of squares every view serves at the start of a check (a
    sharded view: local sums, one all-reduce), so a sharded check screens exactly as the
    unsharded one. ``squares`` (the mean of ``(g_t . s)^2`` over the sign vectors drawn, an
    unbiased estimate of ``||g_t||^2``) is kept for a run without them.
    """
    exact = getattr(run, "grad_squares", None)
    if exact is not None and len(exact):
        return {s: math.sqrt(float(exact[s])) for s in tensors}
    return {s: math.sqrt(squares[s]) for s in tensors}


def gradient_dots(run: _Run, parts: Sequence[tuple[int, Direction]]) -> FloatArray:
    """``g_t . v`` for each ``(t, v)`` of ``parts``, in order.

    The screen's candidate directions go to the run's values in one call: a view that holds
    the gradient elsewhere (sharded over processes) answers them all with one collective.
    """
    return run.values.gradient_dots(parts)


@attrs.define
class _Direction:
    """One joint direction: each tensor's unit part ``u_t`` and the step along it."""

    parts: dict[int, Direction]  # u_t, Rademacher signs / sqrt(n_t), by global element index
    steps: dict[int, float]  # the step along u_t: alpha * step
    units: dict[int, float]  # |alpha_t step_t|: one unit of tensor t's own direction
    # The typical size of tensor t's share along a random direction of this length:
    # |alpha_t step_t| ||g_t|| / sqrt(n_t) (what its gradient's round-off is measured against).
    typical: dict[int, float]


@attrs.define
class _Joint:
    """One joint probe over a set of tensors: its discrepancy and its noise."""

    members: tuple[int, ...]
    numeric: float
    analytic: float
    shares: dict[int, float]  # g_t . (x+ - x-) / 2, per tensor
    noise: float

    @property
    def delta(self) -> float:
        return self.numeric - self.analytic


@attrs.frozen
class ScreenOutcome:
    """What the screen decided.

    Attributes:
        cleared: Tensors the screen judged on its own, with their evidence and status
            (pass or zero).
        suspects: Tensors to probe on their own: named by group testing, or not resolved by
            the screen at the tolerance.
        evaluations: Loss evaluations spent on joint probes (shared by all tensors).
        probes: Joint probes made (screening and group testing).
        isolated: Tensors named by group testing (a subset of ``suspects``).
        analytic: The screening probes' analytic derivatives per unit length of the joint
            direction (for the check's overall difference).
        numeric: Their central differences, likewise.
        directions: Joint directions each screened tensor took part in (over all rounds).
    """

    cleared: dict[int, tuple[Evidence, Status]]
    suspects: list[int]
    evaluations: int
    probes: int
    isolated: tuple[int, ...]
    analytic: FloatArray
    numeric: FloatArray
    directions: dict[int, int]


def screen(
    run: _Run,
    chosen: Sequence[int],
    count: int,
    coordinate_evidence: Mapping[int, Evidence],
) -> ScreenOutcome:
    """Screen ``chosen`` with ``count`` joint probes; group-test when the screen fails.

    Tensors a round cannot resolve at the tolerance (their share is small next to the other
    tensors' noise) are screened again on their own, jointly, with fresh directions: the
    noise of a joint probe shrinks with the number of tensors in it.

    Args:
        run: The running check (its view, gradient, step and noise model).
        chosen: Layout positions of the tensors to screen.
        count: Joint probes to make per round (the check's directions per tensor).
        coordinate_evidence: Each tensor's coordinate probes, judged with its screen rows.
    """
    started = run.evaluations
    queue = [[s for s in chosen if run.layout[s].size > 0]]
    cleared: dict[int, tuple[Evidence, Status]] = {}
    suspects: list[int] = []
    isolated: list[int] = []
    directions: dict[int, int] = {}
    analytic: list[FloatArray] = []
    numeric: list[FloatArray] = []
    made = 0
    for _ in range(_ROUNDS):
        if not queue:
            break
        group = queue.pop(0)
        one = _round(run, group, count, coordinate_evidence)
        made += one.probes
        analytic.append(one.analytic)
        numeric.append(one.numeric)
        for s in group:
            directions[s] = directions.get(s, 0) + count
        # "Zero" for a tensor whose analytic gradient is not exactly 0 may only mean that the
        # joint noise hides a small gradient (a branch behind a LayerScale of 1e-6, judged at
        # its own scale only on its own): such tensors are probed one by one.
        for s in [s for s, (_, st) in one.cleared.items() if st is Status.ZERO]:
            if run.nonzero[s]:
                del one.cleared[s]
                suspects.append(s)
        cleared.update(one.cleared)
        isolated.extend(one.isolated)
        suspects.extend(one.isolated)
        suspects.extend(one.failing)
        # A lone unresolved tensor costs no more probed on its own; a round that resolved
        # nothing would not do better the next time.
        if len(one.unresolved) <= 1 or len(one.unresolved) == len(group):
            suspects.extend(one.unresolved)
        else:
            queue.append(one.unresolved)
    for group in queue:
        suspects.extend(group)
    # Tensors with no elements have nothing to screen: they go the per-tensor way (a no-op).
    suspects.extend(s for s in chosen if run.layout[s].size == 0)
    order = {s: i for i, s in enumerate(chosen)}
    return ScreenOutcome(
        cleared=cleared,
        suspects=sorted(suspects, key=order.__getitem__),
        evaluations=run.evaluations - started,
        probes=made,
        isolated=tuple(sorted(isolated, key=order.__getitem__)),
        analytic=np.concatenate(analytic) if analytic else np.empty(0),
        numeric=np.concatenate(numeric) if numeric else np.empty(0),
        directions=directions,
    )


@attrs.frozen
class _RoundOutcome:
    """One round of joint probes over a set of tensors."""

    cleared: dict[int, tuple[Evidence, Status]]
    isolated: list[int]  # named by group testing
    failing: list[int]  # failing on their own evidence (their coordinates) after group testing
    unresolved: list[int]  # inconclusive from the joint probes
    probes: int
    analytic: FloatArray
    numeric: FloatArray


def _round(
    run: _Run,
    tensors: Sequence[int],
    count: int,
    coordinate_evidence: Mapping[int, Evidence],
) -> _RoundOutcome:
    """``count`` joint probes over ``tensors``, group testing if one fails, each tensor judged."""
    directions = [_draw(run, tensors) for _ in range(count)]
    probes = [_probe(run, d, tensors) for d in directions]
    if not _is_float64_loss(run):
        for d, p in zip(directions, probes, strict=True):
            half = _probe(run, d, tensors, scale=0.5)
            p.noise += abs(p.delta - half.delta)  # both in units of the full step
    made = len(probes) * (1 if _is_float64_loss(run) else 2)
    lengths = [math.sqrt(sum(step * step for step in d.steps.values())) or 1.0 for d in directions]
    analytic = np.array([p.analytic / n for p, n in zip(probes, lengths, strict=True)])
    numeric = np.array([p.numeric / n for p, n in zip(probes, lengths, strict=True)])
    statuses = {
        s: classify(_attributed(run, s, probes, directions, coordinate_evidence)) for s in tensors
    }
    isolated: list[int] = []
    if any(status is Status.FAIL for status in statuses.values()):
        k = int(np.argmax([abs(p.delta) / max(p.noise, 1e-300) for p in probes]))
        found: dict[int, float] = {}
        made += _group_test(run, directions[k], probes[k], found, coordinate_evidence)
        isolated = sorted(found)
        residual = []
        for j, (d, p) in enumerate(zip(directions, probes, strict=True)):
            explained, noise = 0.0, p.noise
            for s in isolated:
                if j == k:
                    part = found[s]
                    share_noise = 0.0
                else:
                    one = _probe(run, d, [s])
                    made += 1
                    part, share_noise = one.delta, one.noise
                explained += part
                noise = math.hypot(noise, share_noise)
            rest = tuple(s for s in p.members if s not in found)
            residual.append(
                _Joint(
                    rest,
                    p.numeric,
                    p.analytic + explained,
                    {s: p.shares[s] for s in rest},
                    noise,
                )
            )
        probes = residual
        statuses = {
            s: classify(_attributed(run, s, probes, directions, coordinate_evidence))
            for s in tensors
            if s not in found
        }
    cleared: dict[int, tuple[Evidence, Status]] = {}
    failing: list[int] = []
    unresolved: list[int] = []
    for s in tensors:
        if s in isolated:
            continue
        status = statuses[s]
        if status in (Status.PASS, Status.ZERO):
            e = _attributed(run, s, probes, directions, coordinate_evidence)
            cleared[s] = (e, status)
        elif status is Status.INCONCLUSIVE:
            unresolved.append(s)
        else:
            failing.append(s)
    return _RoundOutcome(cleared, isolated, failing, unresolved, made, analytic, numeric)


def _is_float64_loss(run: _Run) -> bool:
    return bool(np.dtype(run.view.loss_dtype) == np.float64)


def _draw(run: _Run, tensors: Sequence[int]) -> _Direction:
    """A random joint direction, preconditioned (module docstring); signs left random."""
    # Of a few random sign vectors per tensor, the one along which its gradient's share is
    # largest: a share near 0 by chance would leave the tensor unresolved (the others' noise
    # hides it). The choice depends on the gradient only, so a bug's own projection stays as
    # random as before, and the shares' signs stay random (round-off adds, never aligns).
    candidates = [_signs(run, tensors) for _ in range(_CANDIDATES)]
    dots = gradient_dots(run, [(s, c[s]) for c in candidates for s in tensors])
    # Along the signs themselves (g . s = sqrt(n) g . u): the mean of their squares is an
    # unbiased estimate of ||g_t||^2.
    dots *= np.tile([math.sqrt(run.layout[s].size) for s in tensors], _CANDIDATES)
    rows = dots.reshape(_CANDIDATES, len(tensors))
    signs = dict(candidates[0])
    best = {s: abs(float(d)) for s, d in zip(tensors, rows[0], strict=True)}
    squares = {s: float(d) * float(d) / _CANDIDATES for s, d in zip(tensors, rows[0], strict=True)}
    for other, row in zip(candidates[1:], rows[1:], strict=True):
        for s, d in zip(tensors, row, strict=True):
            squares[s] += float(d) * float(d) / _CANDIDATES
            if abs(float(d)) > best[s]:
                signs[s], best[s] = other[s], abs(float(d))
    base = {s: _base_step(run, s) for s in tensors}
    norms = gradient_norms(run, tensors, squares)
    # Each tensor's typical share at its full step: base_t ||g_t|| / sqrt(n_t).
    full = {s: base[s] * norms[s] / math.sqrt(signs[s].size) for s in tensors}
    positive = [a for a in full.values() if a > 0.0]
    median = float(np.median(positive)) if positive else 0.0
    steps, typical = {}, {}
    for s in tensors:
        share = full[s]
        alpha = min(1.0, median / share) if share > _SHARE_FLOOR * median else 1.0
        steps[s] = alpha * base[s]
        typical[s] = alpha * share
    return _Direction(signs, steps, dict(steps), typical)


def _signs(run: _Run, tensors: Sequence[int]) -> dict[int, Direction]:
    """A random unit direction over every tensor of ``tensors``, drawn in one call (not one
    per tensor), kept as packed bits read by global element index."""
    parts = Direction.draw_joint([run.layout[s].size for s in tensors], run.rng)
    return dict(zip(tensors, parts, strict=True))


def _base_step(run: _Run, s: int) -> float:
    """The step a per-tensor direction probe of ``s`` takes (check.py's ``direction``)."""
    return run.h * (max(1.0, run.rms[s]) if run.relative_step else 1.0)


def _probe(run: _Run, d: _Direction, members: Sequence[int], scale: float = 1.0) -> _Joint:
    """Two evaluations with every tensor of ``members`` moved along its part of ``d``.

    Written and read through the run's values (``write_along``, ``gradient_along``), as a
    per-tensor direction probe is: a partitioned view writes each rank's shard of every tensor
    and sums the shares of ``g . v`` in the evaluations' own agreement, holding no whole tensor.
    """
    values = run.values
    steps = {s: d.steps[s] * scale for s in members}
    for s in members:
        values.write_along(s, d.parts[s], steps[s])
    j_plus = _evaluate(run, members, +1)
    for s in members:
        values.write_along(s, d.parts[s], -steps[s])
    j_minus = _evaluate(run, members, -1)
    for s in members:
        run.view.reset(s, None)
    # g . (x+ - x-) / 2 over the values stored (rounded to the tensor's dtype).
    shares = {s: steps[s] * values.gradient_along(s, d.parts[s], steps[s]) for s in members}
    numeric = (j_plus - j_minus) / 2.0
    analytic = float(sum(shares.values()))
    noise = run.noise(j_plus, j_minus) / 2.0
    if run.u_grad > run.u:
        squares = float(sum((d.typical[s] * scale) ** 2 for s in members))
        noise += _SCREEN_GRADIENT_ULPS * run.u_grad * math.sqrt(squares)
    if run.spreads.any():  # each move is a unit vector times its step
        noise += joint_spread(run.spreads, {s: abs(step) for s, step in steps.items()})
    # Measured at scale: report in units of the full step, like the per-tensor second look.
    return _Joint(
        tuple(members),
        numeric / scale,
        analytic / scale,
        {s: a / scale for s, a in shares.items()},
        noise / scale,
    )


def _evaluate(run: _Run, members: Sequence[int], sign: int) -> float:
    value = run.view.evaluate()
    run.evaluations += 1
    if not math.isfinite(value):
        names = ", ".join(run.layout[s].name for s in members[:5])
        more = f" and {len(members) - 5} more" if len(members) > 5 else ""
        raise LossError(
            f"the loss is {value} when {names}{more} are perturbed jointly by "
            f"{'+' if sign > 0 else '-'}{run.h:.3g} x their scale; gradients can only be "
            "checked where the loss is finite (check the inputs, a log of 0, an overflow in "
            "exp), or pass strategy='per-tensor'"
        )
    return value


def _attributed(
    run: _Run,
    s: int,
    probes: Sequence[_Joint],
    directions: Sequence[_Direction],
    coordinate_evidence: Mapping[int, Evidence],
) -> Evidence:
    """Tensor ``s``'s evidence: every joint discrepancy taken as its own, in its own units."""
    rows_a, rows_n, rows_e = [], [], []
    for p, d in zip(probes, directions, strict=True):
        unit = d.units[s]
        a = p.shares[s] / unit
        rows_a.append(a)
        rows_n.append(a + p.delta / unit)
        rows_e.append(p.noise / unit)
    coordinates = coordinate_evidence.get(s)
    e = Evidence(
        np.array(rows_a),
        np.array(rows_n),
        np.array(rows_e),
        run.tolerance,
        run.scale,
        run.floor_u,
    )
    if coordinates is None or coordinates.size == 0:
        return e
    e.analytic = np.concatenate([coordinates.analytic, e.analytic])
    e.numeric = np.concatenate([coordinates.numeric, e.numeric])
    e.noise = np.concatenate([coordinates.noise, e.noise])
    return e


def _group_test(
    run: _Run,
    d: _Direction,
    p: _Joint,
    found: dict[int, float],
    coordinate_evidence: Mapping[int, Evidence],
) -> int:
    """Split ``p``'s tensors until the failing ones stand alone; their discrepancies in ``found``.

    Returns the joint probes made (one per split: the other half is the difference).
    """
    made = 0
    pending = [p]
    while pending:
        group = pending.pop()
        if not _fails(run, group, d, coordinate_evidence):
            continue
        if len(group.members) == 1:
            found[group.members[0]] = group.delta
            continue
        half = len(group.members) // 2
        left = _probe(run, d, group.members[:half])
        made += 1
        right_members = group.members[half:]
        right = _Joint(
            right_members,
            group.numeric - left.numeric,
            group.analytic - left.analytic,
            {s: group.shares[s] for s in right_members},
            math.hypot(group.noise, left.noise),
        )
        pending.extend([right, left])
    return made


def _fails(
    run: _Run, group: _Joint, d: _Direction, coordinate_evidence: Mapping[int, Evidence]
) -> bool:
    """Whether a group's discrepancy fails some member when taken as that member's own."""
    del coordinate_evidence  # coordinates judge tensors, not groups
    units = np.array([d.units[s] for s in group.members])
    analytic = np.array([group.shares[s] for s in group.members]) / units
    # One row per member: the verdict's rule 1 for a single probe is its per-probe allowance.
    e = Evidence(
        analytic,
        analytic + group.delta / units,
        group.noise / units,
        run.tolerance,
        run.scale,
        run.floor_u,
    )
    return bool(np.any(np.abs(e.numeric - e.analytic) > allowance(e)))
