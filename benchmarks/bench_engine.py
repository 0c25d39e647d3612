"""Benchmark of gradguard's check engine against the cost model in DESIGN.md.

A gradient check is dominated by loss evaluations. DESIGN.md ("Cost model") counts them:

* seed mode / ``sample="all"``: 2n evaluations (n = number of parameters);
* k sampled coordinates: 2k;
* K random directions per tensor over T tensors: 2KT;

plus a constant: the engine evaluates the loss twice at the unperturbed parameters (the
reference value, and once more to detect a nondeterministic loss), and calls the analytic
gradient once. Only a tensor that looks wrong gets a second look (every probe again
at half the step) and, if needed, a bisection; a correct model never pays for those.

The *floor* of a check is the cost of those evaluations and gradient calls; everything else
(sampling, directions, bookkeeping, the adapter's writes and restores, the verdict, the
report) is *engine overhead*, and the target is ``T_check / T_floor <= 1.05``.

The script prints a Markdown report with three sections:

1. **Engine overhead** on a 1.01M-parameter NumPy MLP (1000 -> 1000 tanh -> 10, float64,
   batch 256, MSE, hand-written backprop), for the default strategy, ``sample=256`` and
   ``sample=64, directions=0``. Two floors are given: ``E * t_loss + G * t_grad`` with
   per-call medians, and a raw loop that makes exactly E in-place single-coordinate
   perturb/evaluate/restore steps (and G gradient calls) on the same arrays with the same
   loss callable. Repetitions are interleaved (check, floor, check, floor, ...) and medians
   are reported, so machine noise hits both sides alike. A third reference, immune to that
   noise, is the time spent inside the loss and gradient callables during the check itself
   (a stopwatch wrapper): what is left is the engine's own work.
2. **Evaluations per mode** for n = 1e3 .. 1e6 parameters in 4 tensors, read from
   ``report.evaluations`` of real checks (a cheap quadratic loss keeps this fast), next to
   the cost model.
3. **Seed recipe vs gradguard ``sample="all"``** on a ~2,000-parameter network: the seed's
   loop (copies the whole vector per coordinate, O(n^2) overall) against seed mode, with the
   differences each reports.

BLAS is pinned to one thread (``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1``,
set before NumPy is imported) so that one loss evaluation costs the same inside and outside
the check, whatever else runs on the machine's two cores.

Run ``python benchmarks/bench_engine.py`` (about 1.5 minutes on 2 cores) or with
``--quick`` (one repetition and a batch of 128 in section 1, about 15 seconds: a smoke test,
not a measurement). Only stdout is written.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

_BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _variable in _BLAS_THREAD_VARIABLES:
    os.environ[_variable] = "1"  # before NumPy loads its BLAS

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from _common import Stopwatch, median, ms, timed  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard.engine import DEFAULT_COORDINATES  # noqa: E402

FloatArray = npt.NDArray[np.float64]
Params = dict[str, FloatArray]
LossFn = Callable[[Params], float]
GradFn = Callable[[Params], Params]

ROOT = Path(__file__).resolve().parents[1]


# -- timing helpers ------------------------------------------------------------------------


# -- 1. engine overhead on a 1M-parameter MLP -----------------------------------------------


class Mlp:
    """A 2-layer tanh MLP with MSE loss and its hand-written backprop."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, batch: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch, n_in))
        self.y = rng.standard_normal((batch, n_out))
        self.params: Params = {
            "W1": rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in),
            "b1": 0.1 * rng.standard_normal(n_hidden),
            "W2": rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden),
            "b2": 0.1 * rng.standard_normal(n_out),
        }

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params.values())

    def loss(self, p: Params) -> float:
        hidden = np.tanh(self.x @ p["W1"] + p["b1"])
        out = hidden @ p["W2"] + p["b2"]
        return float(np.mean(np.square(out - self.y)))

    def grad(self, p: Params) -> Params:
        hidden = np.tanh(self.x @ p["W1"] + p["b1"])
        out = hidden @ p["W2"] + p["b2"]
        d_out = 2.0 * (out - self.y) / out.size
        d_hidden = (d_out @ p["W2"].T) * (1.0 - hidden * hidden)
        return {
            "W1": self.x.T @ d_hidden,
            "b1": d_hidden.sum(axis=0),
            "W2": hidden.T @ d_out,
            "b2": d_out.sum(axis=0),
        }


def raw_floor(
    loss: LossFn,
    grad: GradFn,
    params: Params,
    evaluations: int,
    gradient_calls: int,
    rng: np.random.Generator,
) -> float:
    """Time E loss evaluations and G gradient calls made the cheapest honest way.

    Each pair of evaluations perturbs one coordinate in place (+h, -h), evaluates the loss
    on the very arrays the loss reads, and writes the saved value back. Coordinates are
    drawn uniformly over all parameters; an odd E ends with one unperturbed evaluation.
    """
    flats = [array.reshape(-1) for array in params.values()]
    offsets = np.cumsum([0] + [flat.size for flat in flats])
    steps = []
    for i in rng.integers(0, int(offsets[-1]), size=evaluations // 2):
        t = int(np.searchsorted(offsets, i, side="right")) - 1
        steps.append((flats[t], int(i - offsets[t])))
    sink = 0.0
    start = time.perf_counter()
    for _ in range(gradient_calls):
        grad(params)
    for flat, i in steps:
        x = float(flat[i])
        h = 6e-6 * max(1.0, abs(x))
        flat[i] = x + h
        j_plus = loss(params)
        flat[i] = x - h
        j_minus = loss(params)
        flat[i] = x
        sink += (j_plus - j_minus) / (2.0 * h)
    if evaluations % 2:
        loss(params)
    elapsed = time.perf_counter() - start
    assert math.isfinite(sink)
    return elapsed


def per_call_times(
    loss: LossFn, grad: GradFn, params: Params, calls: int
) -> tuple[list[float], list[float]]:
    """``calls`` timings of one loss evaluation and of one gradient call, alternating."""
    loss_times, grad_times = [], []
    for _ in range(calls):
        loss_times.append(timed(lambda: loss(params))[0])
        grad_times.append(timed(lambda: grad(params))[0])
    return loss_times, grad_times


def overhead_section(reps: int, calls_per_rep: int, batch: int) -> list[str]:
    model = Mlp(n_in=1000, n_hidden=1000, n_out=10, batch=batch)
    params = model.params
    before = {k: v.copy() for k, v in params.items()}
    modes: list[tuple[str, dict[str, Any]]] = [
        ("default (directions=2, 8 coordinates)", {}),
        ("sample=256 (+ default directions=2)", {"sample": 256}),
        ("sample=64, directions=0", {"sample": 64, "directions": 0}),
    ]
    # Warm-up (coordinate and direction probes): plugin discovery, first allocations, BLAS.
    gg.check(model.loss, params, model.grad, sample=1, directions=1, seed=0)
    per_call_times(model.loss, model.grad, params, 3)

    rows, call_rows = [], []
    rng = np.random.default_rng(1)
    for label, options in modes:
        check_times: list[float] = []
        inside_times: list[float] = []
        raw_times: list[float] = []
        loss_times: list[float] = []
        grad_times: list[float] = []
        counts: set[tuple[int, int]] = set()
        statuses: set[str] = set()
        for rep in range(reps):
            # The check gets the same callables wrapped in a stopwatch (~0.2 us per call),
            # which tells how much of T_check is spent inside the loss and the gradient.
            loss, grad = Stopwatch(model.loss), Stopwatch(model.grad)
            elapsed, report = timed(partial(gg.check, loss, params, grad, seed=rep, **options))
            check_times.append(elapsed)
            inside_times.append(loss.elapsed + grad.elapsed)
            counts.add((report.evaluations, report.gradient_calls))
            statuses.add(str(report.status))
            e, g = report.evaluations, report.gradient_calls
            raw_times.append(raw_floor(model.loss, model.grad, params, e, g, rng))
            lt, gt = per_call_times(model.loss, model.grad, params, calls_per_rep)
            loss_times += lt
            grad_times += gt
        # The seeds (so the coordinates) differ per repetition, but not the count, for a
        # correct gradient; a second look would show up here as several counts.
        e, g = max(counts)
        t_loss, t_grad = median(loss_times), median(grad_times)
        t_check = median(check_times)
        floor_calls = e * t_loss + g * t_grad
        floor_raw = median(raw_times)
        inside = median(inside_times)
        outside = median([c - i for c, i in zip(check_times, inside_times, strict=True)])
        rows.append(
            f"| {label} | {'/'.join(str(c[0]) for c in sorted(counts))} | {g} "
            f"| {', '.join(sorted(statuses))} | {ms(t_check)} | {ms(floor_calls)} "
            f"| {ms(floor_raw)} | {ms(inside)} | {ms(outside)} "
            f"| **{t_check / floor_calls:.3f}** | **{t_check / floor_raw:.3f}** "
            f"| **{t_check / inside:.3f}** |"
        )
        call_rows.append(
            f"| {label} | {t_loss * 1e3:.2f} | {t_grad * 1e3:.2f} "
            f"| {(floor_raw - g * t_grad) / e * 1e3:.2f} "
            f"| {(inside - g * t_grad) / e * 1e3:.2f} |"
        )
    restored = all(np.array_equal(before[k], params[k]) for k in params)

    return [
        "## 1. Engine overhead (target: T_check / T_floor <= 1.05)",
        "",
        f"Model: 2-layer MLP 1000 -> 1000 (tanh) -> 10, {model.size:,} float64 parameters "
        f"in 4 tensors, batch {batch}, MSE loss, hand-written backprop; NumPy adapter, params "
        "perturbed in place. BLAS pinned to 1 thread. Median of "
        f"{reps} interleaved repetitions per mode (check, raw-loop floor, {calls_per_rep} "
        "single loss and gradient calls, check, ...).",
        "",
        "- **floor (calls)** = E x t_loss + G x t_grad, t_loss and t_grad being medians of "
        "single calls.",
        "- **floor (raw loop)** = G gradient calls and E loss evaluations in a plain loop, "
        "each pair perturbing one random coordinate in place (+h, -h) and writing the saved "
        "value back; same loss callable, same arrays. Not the check's own coordinates "
        "(the check also makes whole-tensor direction probes): the same number of "
        "evaluations.",
        "- **in-check loss+grad** = time spent inside the loss and gradient callables during "
        "the check itself (a stopwatch wrapper); **outside** = T_check minus that, i.e. the "
        "engine's own work per check (median of the per-repetition differences). The last "
        "ratio is immune to machine noise between the check and a separate floor run.",
        "",
        "| mode | E | G | status | T_check (ms) | floor (calls) (ms) | floor (raw loop) (ms) "
        "| in-check loss+grad (ms) | outside (ms) | ratio vs calls | ratio vs raw loop "
        "| ratio vs in-check |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Per-evaluation cost as each floor sees it (ms; the raw loop and in-check columns "
        "subtract G x t_grad and divide by E):",
        "",
        "| mode | t_loss (single calls) | t_grad (single calls) | per evaluation, raw loop "
        "| per evaluation, in check |",
        "|---|---:|---:|---:|---:|",
        *call_rows,
        "",
        f"Parameters bit-identical after all checks: {'yes' if restored else 'NO'}.",
        "",
    ]


# -- 2. evaluations per mode ----------------------------------------------------------------


def quadratic_model(n: int, seed: int = 0) -> tuple[Params, LossFn, GradFn]:
    """n parameters in 4 tensors (90%, 5%, 4%, 1%) and a weighted sum of squares."""
    rng = np.random.default_rng(seed)
    shapes = {"W1": (n // 100, 90), "b1": (n // 20,), "W2": (n // 25, 1), "b2": (n // 100,)}
    params = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    weights = {name: rng.uniform(0.5, 2.0, size=shape) for name, shape in shapes.items()}

    def loss(p: Params) -> float:
        return 0.5 * sum(float(np.vdot(weights[k], np.square(p[k]))) for k in p)

    def grad(p: Params) -> Params:
        return {k: weights[k] * p[k] for k in p}

    return params, loss, grad


def evaluations_section() -> list[str]:
    n_tensors = 4
    k, k_default, directions = 64, DEFAULT_COORDINATES, 2
    modes: list[tuple[str, dict[str, Any], Callable[[int], int]]] = [
        ('seed / sample="all"', {"sample": "all"}, lambda n: 2 * n + 2),
        (f"sample={k}, directions=0", {"sample": k, "directions": 0}, lambda n: 2 * k + 2),
        (
            f"sample={k} (directions=2, screen)",
            {"sample": k},
            lambda n: 2 + 2 * directions + 2,
        ),
        ("default (screen: 8 coords jointly, K=2)", {}, lambda n: 2 + 2 * directions + 2),
        (
            'strategy="per-tensor" (8 coords, K=2)',
            {"strategy": "per-tensor"},
            lambda n: 2 * max(k_default, n_tensors) + 2 * directions * n_tensors + 2,
        ),
        (
            "directions=2, sample=0 (screen)",
            {"sample": 0, "directions": directions},
            lambda n: 2 * directions + 2,
        ),
    ]
    sizes = [10**3, 10**4, 10**5, 10**6]
    header = "| mode | cost model | " + " | ".join(f"n = {n:,}" for n in sizes) + " |"
    lines = [
        "## 2. Loss evaluations per check",
        "",
        f"T = {n_tensors} tensors (W1 90%, b1 5%, W2 4%, b2 1% of n), cheap quadratic loss "
        "with an exact gradient (no tensor is suspicious, so no second look). Each cell: "
        "report.evaluations of a real check / model prediction (check wall time). The "
        "model is DESIGN.md's 2n, 2k, 2KT plus the constant 2 (two evaluations at theta: "
        "the reference and the nondeterminism check); every check made 1 gradient call. "
        'sample="all" is only run for n <= 1e4.',
        "",
        header,
        "|---|---|" + "---:|" * len(sizes),
    ]
    formulas = [
        "2n + 2",
        "2k + 2",
        "2 + 2 + 2K",
        "2 + 2 + 2K",
        f"2*{DEFAULT_COORDINATES} + 2KT + 2",
        "2K + 2",
    ]
    models = {n: quadratic_model(n) for n in sizes}
    for (label, options, predict), formula in zip(modes, formulas, strict=True):
        cells = []
        for n in sizes:
            params, loss, grad = models[n]
            if options.get("sample") == "all" and n > 10**4:
                cells.append(f"({predict(n):,})")
                continue
            elapsed, report = timed(partial(gg.check, loss, params, grad, seed=0, **options))
            assert report.gradient_calls == 1
            flag = "" if report.evaluations == predict(n) else " (!)"
            cells.append(f"{report.evaluations:,} / {predict(n):,}{flag} ({elapsed * 1e3:,.0f} ms)")
        lines.append(f"| {label} | {formula} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells in parentheses are the formula only. K = 2 directions, k = 64. Screening "
        "(the default) probes every tensor along K joint directions and reads the sampled "
        "coordinates in one joint pair, whatever T and k; per-tensor probing uses max(8, T) "
        "coordinates and K directions per tensor. A (!) is a check that spent more: at "
        "n = 1e6 the loss is ~6e5, whose float64 round-off cannot resolve the tolerance at "
        "the default step, so the coordinates are probed again at a wider step. DESIGN.md's "
        'table says 2k "(+1 for kink and determinism checks)"; the engine makes +2 (both at '
        "theta), as counted here.",
        "",
    ]
    return lines


# -- 3. seed recipe vs seed mode -------------------------------------------------------------


def load_seed_example() -> ModuleType:
    """examples/seed_example.py, imported by path (examples/ is not a package)."""
    path = ROOT / "examples" / "seed_example.py"
    spec = importlib.util.spec_from_file_location("seed_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_section(reps: int) -> list[str]:
    example = load_seed_example()
    rng = np.random.default_rng(2)
    n_in, h1, h2, batch = 32, 48, 8, 64
    x = rng.standard_normal((n_in, batch))
    y = (rng.uniform(size=(1, batch)) > 0.5).astype(np.float64)
    params: Params = {
        "W1": rng.standard_normal((h1, n_in)) / np.sqrt(n_in),
        "b1": 0.1 * rng.standard_normal((h1, 1)),
        "W2": rng.standard_normal((h2, h1)) / np.sqrt(h1),
        "b2": 0.1 * rng.standard_normal((h2, 1)),
        "W3": rng.standard_normal((1, h2)) / np.sqrt(h2),
        "b3": 0.1 * rng.standard_normal((1, 1)),
    }
    n = sum(p.size for p in params.values())
    eps = 1e-7

    def loss(p: Params) -> float:
        return float(example.forward(x, y, p)[0])

    def gradient(buggy: bool) -> GradFn:
        return lambda p: example.backward(x, y, p, buggy=buggy)

    seed_recipe = example.seed_recipe
    # The unavoidable work: 2n forward passes (plus 2 at theta for gradguard).
    bare = median(
        [timed(lambda: [loss(params) for _ in range(2 * n)])[0] for _ in range(max(reps, 3))]
    )
    t_loss = bare / (2 * n)

    seed_mode: dict[str, Any] = {
        "eps": eps,
        "tolerance": 1e-7,
        "sample": "all",
        "directions": 0,
    }
    rows = []
    for label, buggy in (("correct backprop", False), ("buggy backprop (seed's 2 bugs)", True)):
        grad = gradient(buggy)
        recipe_times, check_times = [], []
        recipe_value = float("nan")
        report = None
        for rep in range(reps):
            t, recipe_value = timed(partial(seed_recipe, loss, grad, params, eps))
            recipe_times.append(t)
            t, report = timed(partial(gg.check, loss, params, grad, seed=rep, **seed_mode))
            check_times.append(t)
        assert report is not None
        t_recipe, t_check = median(recipe_times), median(check_times)
        e = report.evaluations
        agreement = abs(report.difference - recipe_value) / max(abs(recipe_value), 1e-300)
        failing = [p.name for p in report.params if not p.passed]
        rows.append(
            f"| {label} | {2 * n:,} / {e:,} | {ms(t_recipe)} / {ms(t_check)} "
            f"| **{t_check / t_recipe:.2f}** "
            f"| {(t_recipe - 2 * n * t_loss) / (2 * n) * 1e6:.1f} / "
            f"{(t_check - e * t_loss) / e * 1e6:.1f} "
            f"| {recipe_value:.10g} / {report.difference:.10g} | {agreement:.1e} "
            f"| {report.status}{' (' + ', '.join(failing) + ')' if failing else ''} |"
        )
    return [
        '## 3. Seed recipe vs gradguard sample="all" (seed mode)',
        "",
        f"Network: examples/seed_example.py's forward/backward (LINEAR->RELU->LINEAR->RELU->"
        f"LINEAR->SIGMOID, cross-entropy), widened to {n_in} -> {h1} -> {h2} -> 1, "
        f"batch {batch}: n = {n:,} parameters. Seed recipe: the example's loop (copy theta "
        "twice per coordinate, rebuild the dict, eps = 1e-7). gradguard: "
        '`check(loss, params, grad, eps=1e-7, tolerance=1e-7, sample="all", directions=0)`. '
        f"Median of {reps} repetitions. One forward pass (the loss) takes "
        f"t_loss = {t_loss * 1e6:.1f} us here (median of 2n bare calls in a loop); "
        "*overhead per evaluation* = (time - evaluations x t_loss) / evaluations.",
        "",
        "| gradient | evaluations (recipe / gradguard) | time, ms (recipe / gradguard) "
        "| gradguard / recipe | overhead per evaluation, us (recipe / gradguard) "
        "| difference (recipe / gradguard) | relative gap | gradguard status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "A failing tensor gets a second look (its probes again at half the step), hence "
        "more evaluations than 2n + 2 on the buggy backprop. A ratio above 1 means gradguard "
        "is slower than the recipe.",
        "",
    ]


# -- report ----------------------------------------------------------------------------------


def header(quick: bool) -> list[str]:
    blas = ", ".join(f"{v}={os.environ[v]}" for v in _BLAS_THREAD_VARIABLES)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [
        "# gradguard engine benchmark"
        + (" (--quick: a smoke test, 1 repetition, batch 128; not a measurement)" if quick else ""),
        "",
        f"- date: {now}",
        f"- Python {platform.python_version()} ({sys.implementation.name}), "
        f"NumPy {np.__version__}, gradguard {gg.__version__}",
        f"- CPU: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} logical CPUs",
        f"- BLAS threads pinned before importing NumPy: {blas}",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark gradguard's check engine.")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: one repetition, batch 128 (~15 s)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:  # one repetition, and a batch of 128 halves every evaluation
        lines = header(quick=True)
        lines += overhead_section(reps=1, calls_per_rep=3, batch=128)
        lines += evaluations_section()
        lines += seed_section(reps=1)
    else:
        lines = header(quick=False)
        lines += overhead_section(reps=5, calls_per_rep=5, batch=256)
        lines += evaluations_section()
        lines += seed_section(reps=3)
    lines.append(f"_Total benchmark time: {time.perf_counter() - started:.1f} s._")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
