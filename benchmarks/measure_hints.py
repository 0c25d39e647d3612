"""Measure how often a failing tensor's hint names the right cause.

Every labelled bug (the zoo's planted bugs in tests/zoo/numpy_models.py, and the kinds in
tests/zoo/hint_cases.py: wrong activation derivative, transposed, swapped, detached branch, a
loss that modifies its parameters) is
checked with several seeds in float64 and float32. Each failing tensor's hint is scored: *right*
when it names the bug's cause, *wrong* when it names another, *silent* when it names none
(saying nothing is better than a wrong cause). Targets: right >= 95%, wrong < 1%.

Run: ``python benchmarks/measure_hints.py [--seeds N]``. Results: docs/numerics.md.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import gradguard as gg
from zoo import numpy_models
from zoo.hint_cases import ZOO_LABELS, hint_cases, named_causes


def labelled_cases(dtype: np.dtype, seed: int) -> list[tuple[str, object, object, object, str]]:
    """(name, params, loss, grad, label) for every labelled bug in ``dtype``."""
    cases = [
        (c.name, c.params, c.loss, c.grad, ZOO_LABELS[c.bug])
        for c in numpy_models.bug_cases(dtype)
        if c.bug in ZOO_LABELS
    ]
    cases += [(c.name, c.params, c.loss, c.grad, c.label) for c in hint_cases(dtype, seed)]
    return cases


def sweep(seeds: int) -> tuple[dict[str, collections.Counter[str]], list[str]]:
    """Scores per label, and the wrong hints seen (for reading)."""
    scores: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wrong: list[str] = []
    for dtype in (np.dtype(np.float64), np.dtype(np.float32)):
        for seed in range(seeds):
            for name, params, loss, grad, label in labelled_cases(dtype, seed):
                report = gg.check(loss, params, grad, seed=seed)  # type: ignore[arg-type]
                for p in report.params:
                    # A loss that modifies its parameters leaves the tensors unjudged
                    # (nondeterministic); those it changed carry the hint.
                    judged = p.status is gg.Status.FAIL
                    unjudged = p.status is gg.Status.NONDETERMINISTIC and bool(p.hint)
                    if not (judged or unjudged):
                        continue
                    causes = named_causes(p.hint)
                    if label in causes:
                        verdict = "right"
                    elif causes:
                        verdict = "wrong"
                        wrong.append(f"{name} seed {seed} {p.name}: {p.hint}")
                    else:
                        verdict = "silent"
                    scores[label][verdict] += 1
                    scores["all"][verdict] += 1
    return scores, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    scores, wrong = sweep(args.seeds)
    print("| bug kind | failing tensors | right | wrong | silent |")
    print("|---|---|---|---|---|")
    for label in sorted(scores, key=lambda k: (k == "all", k)):
        c = scores[label]
        total = sum(c.values())
        print(
            f"| {label} | {total} | {c['right'] / total:.1%} | {c['wrong'] / total:.1%} "
            f"| {c['silent'] / total:.1%} |"
        )
    for line in wrong[:20]:
        print("wrong:", line)


if __name__ == "__main__":
    main()
