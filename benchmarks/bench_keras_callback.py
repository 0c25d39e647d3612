"""Benchmark of GradCheckCallback: its cost to ``model.fit`` once it has switched itself off,
and the cost of one of its checks next to the compiled forward passes the check needs.

The script prints a Markdown report with three sections, all on one Keras model (an MLP
32 -> 256 -> 256 -> 10, ReLU, float32, Adam, batch 128, 32 steps per epoch):

1. **Fit time after the callback switched itself off vs without it.** Fits of several
   epochs, with ``[timer]`` and with ``[timer, GradCheckCallback(every=1, max_checks=1)]``
   (one check at step 0, then off), interleaved fit by fit, the order alternating between
   rounds. A timer callback (epoch hooks only) records each epoch. The first epoch holds the
   check and the second a transient after it (both reported as differences); the ratio of
   the later epochs' median times, paired by round, is the steady-state cost of a callback
   that switched itself off (median, quartiles and range over the rounds). Target: no
   measurable difference.
2. **The per-batch cost of the hook**: ``on_train_batch_begin`` of a switched-off callback,
   timed with ``timeit``, next to the no-op every Keras callback inherits and an empty Python
   function call; and as a fraction of the step time measured in section 1.
3. **A check vs the compiled forward floor**: the callback's check (through its guard, warm:
   the traces are kept from the check made during fit, as every later check of a run finds
   them) against the same number of calls of a compiled float64 forward pass of a float64
   clone of the model plus one compiled gradient (the floor, built with ``tf.function``
   only, so it does not depend on the adapter). Interleaved, medians.

Run ``python benchmarks/bench_keras_callback.py`` (about 25 s on 2 cores) or with
``--quick`` (about 10 s: a smoke test, not a measurement). Only stdout is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _common import (
    per_call_ns,
    tensorflow_header,
)
from bench_tensorflow import compiled_floor, median, ms, timed

from gradguard_tensorflow import GradCheckCallback, model_loss

BATCH = 128
STEPS_PER_EPOCH = 32


def mlp(dtype: str = "float32") -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(256, activation="relu", name="h1", dtype=dtype),
            keras.layers.Dense(256, activation="relu", name="h2", dtype=dtype),
            keras.layers.Dense(10, name="logits", dtype=dtype),
        ],
        name="mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype),
    )
    return model


def data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    return x, (np.abs(x[:, :10]).argmax(axis=1))


class EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    """Wall time of each epoch; epoch hooks only, so Keras' batch dispatch is unchanged."""

    def on_train_begin(self, logs: Any = None) -> None:
        self.epochs: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append(time.perf_counter() - self._started)


# -- 1. fit time --------------------------------------------------------------------------------


def fit_section(rounds: int, epochs: int) -> tuple[list[str], float]:
    x, y = data(0, BATCH * STEPS_PER_EPOCH)
    probe = data(1, BATCH)
    model = mlp()
    timer = EpochTimer()
    callback = GradCheckCallback(probe, every=1, max_checks=1, seed=0)
    checks: list[float] = []

    def fit(with_callback: bool) -> list[float]:
        callbacks = [timer, callback] if with_callback else [timer]
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
        if with_callback:
            assert not callback.active and len(callback.reports) == 1
            checks.append(callback.reports[0].duration_s)
        return list(timer.epochs)

    fit(False)  # warm-up: traces Keras' train function
    fit(True)  # and the check's functions, which the callback keeps for later fits
    checks.clear()
    runs: dict[bool, list[list[float]]] = {False: [], True: []}
    for r in range(rounds):
        for arm in (False, True) if r % 2 == 0 else (True, False):
            runs[arm].append(fit(arm))
    # Epoch 0 holds the check; epoch 1 the transient after it (see below); 2.. steady state.
    steady = {arm: [e for run in runs[arm] for e in run[2:]] for arm in runs}
    ratios = [
        median(on[2:]) / median(off[2:]) for on, off in zip(runs[True], runs[False], strict=True)
    ]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    step = {arm: median(steady[arm]) / STEPS_PER_EPOCH for arm in runs}
    extra = {
        k: median([on[k] - off[k] for on, off in zip(runs[True], runs[False], strict=True)])
        for k in (0, 1)
    }
    spread = [e / median(steady[False]) for e in steady[False]]
    lines = [
        "## 1. Fit time after the callback switched itself off vs without it",
        "",
        f"Model: MLP 32 -> 256 -> 256 -> 10 (ReLU), {model.count_params():,} float32 "
        f"parameters, Adam, batch {BATCH}, {STEPS_PER_EPOCH} steps per epoch, `verbose=0`. "
        f"{rounds} rounds; each round one fit of {epochs} epochs without the callback and one "
        "with `GradCheckCallback(probe, every=1, max_checks=1)` (a warm check at step 0, then "
        "switched off), in alternating order. Epoch 1 holds the check, epoch 2 the transient "
        f"after it; epochs 3-{epochs} are the steady state compared here.",
        "",
        "| fit | epochs timed | median step (us) | min step (us) |",
        "|---|---:|---:|---:|",
        f"| without the callback | {len(steady[False])} | {step[False] * 1e6:,.0f} "
        f"| {min(steady[False]) / STEPS_PER_EPOCH * 1e6:,.0f} |",
        f"| with the callback, switched off | {len(steady[True])} | {step[True] * 1e6:,.0f} "
        f"| {min(steady[True]) / STEPS_PER_EPOCH * 1e6:,.0f} |",
        "",
        f"- Steady-state epoch time with / without, paired by round: median **{q2:.3f}**, "
        f"quartiles {q1:.3f}-{q3:.3f}, range {min(ratios):.3f}-{max(ratios):.3f} over "
        f"{rounds} rounds. For scale, the without-arm's own steady epochs spread over "
        f"{min(spread):.2f}-{max(spread):.2f} of their median.",
        f"- Epoch 1, with the check: +{extra[0] * 1e3:,.0f} ms (median paired difference; the "
        f"check itself took {median(checks) * 1e3:,.0f} ms). Epoch 2, right after it: "
        f"+{extra[1] * 1e3:,.0f} ms: a one-off transient after a check, not a per-step cost "
        "(it also follows a `gradguard.check` made without the callback; it is not garbage "
        "collection, TF32 switching, reading the variables or the loss evaluations alone; its "
        "cause is not pinned down).",
        "",
    ]
    return lines, step[False]


# -- 2. the hook --------------------------------------------------------------------------------


def hook_section(step_s: float, number: int, repeat: int) -> list[str]:
    x, y = data(0, BATCH * 2)
    model = mlp()
    callback = GradCheckCallback(data(1, BATCH), every=1, max_checks=1, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    assert not callback.active
    inherited = keras.callbacks.Callback()

    def empty() -> None:
        return None

    hook = callback.on_train_batch_begin
    rows = [
        ("empty Python function call", per_call_ns(empty, number, repeat)),
        (
            "keras.callbacks.Callback.on_train_batch_begin (the inherited no-op)",
            per_call_ns(lambda: inherited.on_train_batch_begin(5), number, repeat),
        ),
        (
            "GradCheckCallback.on_train_batch_begin, switched off",
            per_call_ns(lambda: hook(5), number, repeat),
        ),
    ]
    ours = rows[-1][1]
    return [
        "## 2. The per-batch cost of the hook",
        "",
        f"`timeit`, {number:,} calls per repeat, median of {repeat} repeats. The callback "
        "overrides only `on_train_batch_begin` among the batch hooks, so Keras keeps "
        "dispatching `on_train_batch_end` asynchronously and never waits for a batch's logs "
        "because of it.",
        "",
        "| call | ns per call |",
        "|---|---:|",
        *[f"| {name} | {ns:.0f} |" for name, ns in rows],
        "",
        f"- A switched-off callback costs {ours:.0f} ns per training step: "
        f"{ours * 1e-9 / step_s:.1e} of this model's {step_s * 1e6:,.0f} us step.",
        "",
    ]


# -- 3. a check vs the floor -------------------------------------------------------------------


def check_section(reps: int) -> list[str]:
    x, y = data(0, BATCH * 2)
    probe_x, probe_y = data(1, BATCH)
    model = mlp()
    callback = GradCheckCallback((probe_x, probe_y), every=1, max_checks=1, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    guard = callback.guard
    assert guard is not None
    cold = callback.reports[0]
    clone = mlp("float64")
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])
    clone_loss = model_loss(clone, probe_x.astype(np.float64), probe_y)
    floor = compiled_floor(lambda: clone_loss(clone), clone.trainable_variables)
    before = [v.numpy().tobytes() for v in model.variables]
    warm = guard.check()  # the traces are on the callback's model_loss from now on
    evaluations = warm.evaluations
    floor(evaluations)  # warm-up: traces
    checks: list[float] = []  # per evaluation: checks may differ in their evaluation count
    floors: list[float] = []
    counts: set[int] = set()
    for _ in range(reps):
        elapsed, report = timed(guard.check)
        checks.append(elapsed / (report.evaluations + 1))
        counts.add(report.evaluations)
        floors.append(timed(lambda: floor(evaluations))[0] / (evaluations + 1))
    same = before == [v.numpy().tobytes() for v in model.variables]
    per_check, per_floor = median(checks), median(floors)
    t_check, t_floor = per_check * (evaluations + 1), per_floor * (evaluations + 1)
    return [
        "## 3. A check vs the compiled forward floor",
        "",
        f"The callback's default check (float64 trace of the model; {evaluations} evaluations "
        f"and one gradient) on the {BATCH}-sample probe batch, made through the callback's "
        f"guard after fit (warm: traces reused). Floor: {evaluations} calls of a compiled "
        "forward pass of a float64 clone of the model and one compiled gradient. Median of "
        f"{reps} interleaved repetitions of the per-evaluation times (evaluations per check: "
        f"{', '.join(map(str, sorted(counts)))}; the time column is for {evaluations}).",
        "",
        "| method | E + G | time (ms) | per evaluation (us) | per evaluation / floor |",
        "|---|---:|---:|---:|---:|",
        f"| check, warm | {evaluations} + 1 | {ms(t_check)} | {per_check * 1e6:,.0f} "
        f"| **{per_check / per_floor:.2f}** |",
        f"| floor: compiled float64 forward | {evaluations} + 1 | {ms(t_floor)} "
        f"| {per_floor * 1e6:,.0f} | |",
        f"| the first check of a fit (cold: tracing {cold.notes['trace_s']} s) "
        f"| {cold.evaluations} + 1 | {ms(cold.duration_s)} | | |",
        "",
        f"- Model variables bit-identical after every check: {'yes' if same else 'NO'}.",
        "",
    ]


def header(quick: bool) -> list[str]:
    return tensorflow_header("GradCheckCallback benchmark", quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark gradguard's Keras callback.")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: few repetitions (~10 s)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines = header(args.quick)
    if args.quick:
        fit_lines, step_s = fit_section(rounds=3, epochs=3)
        lines += fit_lines
        lines += hook_section(step_s, number=20_000, repeat=3)
        lines += check_section(reps=2)
    else:
        fit_lines, step_s = fit_section(rounds=16, epochs=5)
        lines += fit_lines
        lines += hook_section(step_s, number=1_000_000, repeat=7)
        lines += check_section(reps=9)
    lines.append(f"_Total benchmark time: {time.perf_counter() - started:.1f} s._")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
