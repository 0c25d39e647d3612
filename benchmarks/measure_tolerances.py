"""Measure the default tolerances against the zoo of hand-written backprops.

For each dtype and each candidate tolerance, every zoo case (tests/zoo/numpy_models.py:
correct models and planted bugs) is checked with several seeds. A *false alarm* is a correct
model that fails; a *miss* is a corrupted tensor that passes; *extra* is a correct tensor
failing beside a real bug. Also reported: the largest relative difference that a correct
tensor reaches with the default step (the raw first look, before the noise-aware second
look), which is what a fixed tolerance without a second look would have to clear.

Each sweep runs with both strategies (``--strategy`` picks one).

Run: ``python benchmarks/measure_tolerances.py [--seeds N] [--strategy S]``.
Results: docs/numerics.md.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import gradguard as gg
from gradguard.engine import STRATEGIES
from gradguard.engine.numerics import default_tolerance
from zoo import numpy_models

CANDIDATES = {"float64": (1e-6, 1e-7, 1e-8), "float32": (3e-2, 1e-2, 3e-3, 1e-3)}


def sweep(
    dtype: str, tolerance: float, seeds: int, strategy: str
) -> tuple[int, ...] | tuple[float, ...]:
    """Checks, false alarms, inconclusive correct checks, misses, unseen, extra, evaluations.

    A *false alarm* is a correct model with a failing tensor; an *inconclusive* correct check
    could not see (not passed, but not a false alarm); a *miss* is a corrupted tensor that
    passed; an *unseen* one was inconclusive; *extra* is a correct tensor failing beside a bug.
    """
    cases = [c for c in numpy_models.all_cases() if c.name.endswith(dtype)]
    false_alarms = inconclusive = misses = unseen = extra = 0
    evaluations = []
    for case in cases:
        for seed in range(seeds):
            report = gg.check(
                case.loss,
                case.params,
                case.grad,
                seed=seed,
                tolerance=tolerance,
                strategy=strategy,  # type: ignore[arg-type]
            )
            evaluations.append(report.evaluations)
            failed, corrupted = set(report.failed), set(case.corrupted)
            blind = set(report.inconclusive)
            false_alarms += bool(failed) and not corrupted
            inconclusive += bool(blind) and not corrupted and not failed
            misses += len(corrupted - failed - blind)
            unseen += len((corrupted - failed) & blind)
            extra += len(failed - corrupted) if corrupted else 0
    n = len(cases) * seeds
    return n, false_alarms, inconclusive, misses, unseen, extra, float(np.mean(evaluations))


def worst_correct_difference(dtype: str, seeds: int) -> list[tuple[float, str]]:
    """The largest first-look difference of each correct tensor (excluding ~0 gradients)."""
    worst: dict[str, float] = {}
    for case in numpy_models.correct_cases(np.dtype(dtype)):
        for seed in range(seeds):
            report = gg.check(case.loss, case.params, case.grad, seed=seed, tolerance=1.0)
            for p in report.params:
                key = f"{case.name.split('/')[0]}:{p.name}"
                worst[key] = max(worst.get(key, 0.0), p.difference)
    return sorted(((v, k) for k, v in worst.items()), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument(
        "--strategy", choices=[*STRATEGIES, "both"], default="both", help="default: both"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"# Tolerance sweep on the zoo ({args.seeds} seeds per case)\n")
    print(
        "| dtype | tolerance | strategy | checks | false alarms | inconclusive "
        "| missed tensors | unseen tensors | extra | evaluations |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    for dtype, tolerances in CANDIDATES.items():
        default = default_tolerance(dtype)
        for tol in tolerances:
            for strategy in strategies:
                n, fa, blind, miss, unseen, extra, evals = sweep(dtype, tol, args.seeds, strategy)
                mark = " (default)" if tol == default else ""
                print(
                    f"| {dtype} | {tol:g}{mark} | {strategy} | {n} | {fa} | {blind} | {miss} "
                    f"| {unseen} | {extra} | {evals:.0f} |"
                )
    for dtype in CANDIDATES:
        print(f"\nLargest first-look difference of correct tensors, {dtype}:\n")
        for value, key in worst_correct_difference(dtype, min(args.seeds, 10))[:6]:
            print(f"- {key}: {value:.2e}")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
