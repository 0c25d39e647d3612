"""Benchmark of gradguard's TensorFlow / Keras adapter.

The script prints a Markdown report with four sections:

1. **Compiled vs eager vs the compiled forward floor** on a 784-256-10 ReLU MLP (Keras,
   float32, batch 64, sparse categorical cross-entropy), checked with 64 sampled
   coordinates (``sample=64, directions=0``: E = 130 loss evaluations and one analytic
   gradient). The check, warm (its ``model_loss`` keeps the traced functions from an
   earlier check) and cold (tracing included), in both precisions, against:

   - the **compiled forward floor**: E calls of ``tf.function(loss)`` and one compiled
     gradient, nothing else (float32: the user's model; float64: a float64 clone of it,
     built with Keras' own ``clone_model``, so the floor does not depend on the adapter);
   - a **compiled finite-difference loop** a user could write: one ``tf.function`` that
     assigns the perturbed kernel, evaluates the loss and assigns the original back;
   - an **eager Python loop** of the same evaluations: assign the perturbed kernel, call the
     loss eagerly, put it back; plus one eager ``GradientTape`` gradient.

   Repetitions are interleaved (every method once per round) and medians reported.
   Targets: the warm check >= 5x faster than the eager loop, <= 1.2x the floor.
2. **Copy-on-read**: a model with a 2048x4096 Dense layer, and the same layer as a plain
   ``tf.Variable``, trained with a compiled SGD step (batch 8). Step time before a check,
   after it, and after one deliberate sparse write into the big kernel (a
   ``scatter_nd_update`` that writes back the value already there), each phase measured
   interleaved with an identical control model that is never checked, so machine noise
   cancels out in the ratio.
3. **Against ``tf.test.compute_gradient``** on the same small loss (a 20-16-4 tanh MLP whose
   second matmul has a hand-written ``tf.custom_gradient``), correct and with a planted bug.
4. **Numerics** (not in ``--quick``): the Keras zoo of ``tests/zoo/tf_models.py`` over many
   weight initializations and seeds, in float64 (the default) and native float32: false
   alarms, missed bugs, largest difference of a correct tensor.

Run ``python benchmarks/bench_tensorflow.py`` (a few minutes on 2 cores) or with ``--quick``
(about 20 s: a smoke test, not a measurement). Only stdout is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from _common import (
    median,
    ms,
    tensorflow_header,
    timed,
)

import gradguard as gg
from gradguard_tensorflow import TFParams, model_loss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


# -- helpers ------------------------------------------------------------------------------------


# -- 1. compiled vs eager vs floor ---------------------------------------------------------------


def mlp(dtype: str = "float32") -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu", name="hidden", dtype=dtype),
            keras.layers.Dense(10, name="logits", dtype=dtype),
        ],
        name="mlp",
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype))
    return model


def float64_clone(model: keras.Model) -> keras.Model:
    """The same network in float64, with the same (exactly widened) weights."""
    clone = mlp("float64")
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return clone


def compiled_floor(loss: Callable[[], Any], variables: list[Any]) -> Callable[[int], None]:
    """E compiled loss calls and one compiled gradient, through the public tf.function API."""
    forward = tf.function(loss)

    @tf.function
    def gradient() -> Any:
        with tf.GradientTape() as tape:
            value = loss()
        return tape.gradient(value, variables)

    def run(evaluations: int) -> None:
        gradient()
        for _ in range(evaluations):
            float(forward())

    return run


def compiled_fd_loop(model: keras.Model, loss: Callable[[], Any]) -> Callable[[int], None]:
    """A compiled finite-difference loop over the kernel's coordinates: assign the perturbed
    kernel (dense), evaluate, assign the original back, all in one tf.function."""
    kernel = model.get_layer("hidden").kernel.value
    original = tf.constant(kernel.numpy())
    flat = tf.reshape(original, [-1])

    @tf.function(input_signature=[tf.TensorSpec([1, 1], tf.int64), tf.TensorSpec([1], tf.float32)])
    def evaluate(idx: Any, upd: Any) -> Any:
        kernel.assign(tf.reshape(tf.tensor_scatter_nd_update(flat, idx, upd), kernel.shape))
        value = loss()
        kernel.assign(original)
        return value

    gradient = compiled_floor(loss, model.trainable_variables)

    def run(evaluations: int) -> None:
        gradient(0)
        values = original.numpy().reshape(-1)
        for k in range(evaluations):
            i = (k // 2) * 97 % values.size
            step = 4.9e-3 * (1.0 if k % 2 == 0 else -1.0)
            idx = tf.constant([[i]], tf.int64)
            float(evaluate(idx, tf.constant([values[i] + step], tf.float32)))

    return run


def eager_loop(model: keras.Model, loss: Callable[[], Any]) -> Callable[[int], None]:
    """The same evaluations in eager mode, the way a hand-written check loop does them."""
    kernel = model.get_layer("hidden").kernel
    original = kernel.numpy()

    def run(evaluations: int) -> None:
        with tf.GradientTape() as tape:
            value = loss()
        tape.gradient(value, model.trainable_variables)
        for k in range(evaluations):
            i = (k // 2) * 97 % original.size
            perturbed = original.copy()
            perturbed.flat[i] += 4.9e-3 * (1.0 if k % 2 == 0 else -1.0)
            kernel.assign(perturbed)
            float(loss())
            kernel.assign(original)

    return run


def speed_section(reps: int) -> list[str]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    model = mlp()
    clone = float64_clone(model)
    options: dict[str, Any] = {"sample": 64, "directions": 0, "seed": 0}
    losses = {p: model_loss(model, x, y) for p in ("native", "float64")}
    before = [v.numpy().tobytes() for v in model.variables]

    def check(precision: str) -> gg.CheckReport:
        return gg.check(losses[precision], TFParams(model, precision=precision), **options)

    cold = {p: timed(lambda p=p: check(p)) for p in losses}  # traces, kept for the warm runs
    evals = {p: report.evaluations for p, (_, report) in cold.items()}
    user_loss = model_loss(model, x, y)
    clone_loss = model_loss(clone, x.astype(np.float64), y)
    floor32 = compiled_floor(lambda: user_loss(model), model.trainable_variables)
    floor64 = compiled_floor(lambda: clone_loss(clone), clone.trainable_variables)
    fd_loop = compiled_fd_loop(model, lambda: user_loss(model))
    eager = eager_loop(model, lambda: user_loss(model))
    # (label, evaluations, run, the floor it is compared with)
    methods: list[tuple[str, int, Callable[[], Any], str | None]] = [
        ("check, float64 (default), warm", evals["float64"], lambda: check("float64"), "f64"),
        (
            "floor, float64 (float64 clone)",
            evals["float64"],
            lambda: floor64(evals["float64"]),
            None,
        ),
        ("check, native float32, warm", evals["native"], lambda: check("native"), "f32"),
        ("floor, float32", evals["native"], lambda: floor32(evals["native"]), None),
        (
            "compiled FD loop (dense assign), float32",
            evals["native"],
            lambda: fd_loop(evals["native"]),
            "f32",
        ),
        ("eager loop, float32", evals["native"], lambda: eager(evals["native"]), "f32"),
    ]
    floors = {"f64": "floor, float64 (float64 clone)", "f32": "floor, float32"}
    for _, _, run, _ in methods:  # warm-up: traces, first-call graph optimizations
        run()
    times: dict[str, list[float]] = {label: [] for label, *_ in methods}
    for _ in range(reps):
        for label, _, run, _ in methods:
            times[label].append(timed(run)[0])
    restored = before == [v.numpy().tobytes() for v in model.variables]

    t = {label: median(values) for label, values in times.items()}
    per = {label: t[label] / (e + 1) for label, e, _, _ in methods}
    rows = []
    for label, e, _, floor in methods:
        ratio = f"**{per[label] / per[floors[floor]]:.2f}**" if floor else ""
        rows.append(f"| {label} | {e} + 1 | {ms(t[label])} | {per[label] * 1e6:,.0f} | {ratio} |")
    cold_rows = [
        f"| {precision} | {report.evaluations} + 1 | {ms(elapsed)} "
        f"| {report.notes['trace_s']:.3f} | {report.status} |"
        for precision, (elapsed, report) in cold.items()
    ]
    eager_per = per["eager loop, float32"]
    return [
        "## 1. Compiled vs eager vs the compiled forward floor",
        "",
        f"Model: Keras MLP 784 -> 256 (ReLU) -> 10, {model.count_params():,} float32 "
        "parameters, batch 64, sparse categorical cross-entropy through "
        "`model_loss(model, x, y)`. Check: `sample=64, directions=0, seed=0`. "
        f"Median of {reps} interleaved rounds (every method once per round). Each method "
        "makes the check's E loss evaluations and one gradient; *per evaluation* = "
        "time / (E + 1); the ratio compares per-evaluation times with the floor of the same "
        "precision.",
        "",
        "| method | E + G | time (ms) | per evaluation (us) | per evaluation / floor |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "- Eager loop / warm check, per evaluation: "
        f"**{eager_per / per['check, native float32, warm']:.1f}x** (native float32), "
        f"**{eager_per / per['check, float64 (default), warm']:.1f}x** (float64); "
        f"eager loop / float32 floor: {eager_per / per['floor, float32']:.1f}x (target: the "
        "check >= 5x faster than the eager loop).",
        f"- Variables bit-identical after every check: {'yes' if restored else 'NO'}.",
        "",
        "A cold check traces the loss and its gradient first; a `model_loss` keeps the traces "
        "for the next check of the same model:",
        "",
        "| precision | E + G | cold check (ms) | tracing (s) | status |",
        "|---|---:|---:|---:|---|",
        *cold_rows,
        "",
    ]


# -- 2. copy-on-read ------------------------------------------------------------------------------


def big_keras_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((2048,)),
            keras.layers.Dense(4096, activation="tanh", name="big"),
            keras.layers.Dense(10, name="head"),
        ],
        name=f"big{seed}",
    )
    model.compile(loss="mse")
    return model


class PlainModel(tf.Module):
    """The same network as plain tf.Variables (the adapter assigns these densely)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.w = tf.Variable((rng.standard_normal((2048, 4096)) / 45).astype(np.float32))
        self.b = tf.Variable(np.zeros(4096, np.float32))
        self.head = tf.Variable((rng.standard_normal((4096, 10)) / 64).astype(np.float32))

    def __call__(self, x: Any) -> Any:
        return tf.tanh(x @ self.w + self.b) @ self.head


def train_step(model: Any, x: Any, y: Any) -> Callable[[], Any]:
    """A compiled SGD step (forward, gradient, update), as Keras' fit would run it."""
    variables = model.trainable_variables
    optimizer = keras.optimizers.SGD(1e-4)

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def step_ratio(subject: Callable[[], Any], control: Callable[[], Any], steps: int) -> float:
    """Median step time of ``subject`` over ``control``, interleaved step by step."""
    ratios = []
    for _ in range(steps):
        a, _ = timed(lambda: float(subject()))
        b, _ = timed(lambda: float(control()))
        ratios.append(a / b)
    return median(ratios)


def step_ms(step: Callable[[], Any], steps: int) -> float:
    return median([timed(lambda: float(step()))[0] for _ in range(steps)]) * 1e3


def copy_on_read_section(steps: int) -> list[str]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 2048)).astype(np.float32)
    y = rng.standard_normal((8, 10)).astype(np.float32)
    rows = []
    for kind in ("Keras model", "plain tf.Variables"):
        if kind == "Keras model":
            subject, control = big_keras_model(1), big_keras_model(2)
            kernel = subject.get_layer("big").kernel.value
            loss: Callable[..., Any] = model_loss(subject, x, y)
            params: Any = subject
        else:
            subject, control = PlainModel(1), PlainModel(2)
            kernel = subject.w

            def loss(m: Any) -> Any:
                return tf.reduce_mean(tf.square(m(x) - y))

            params = subject
        step_a, step_b = train_step(subject, x, y), train_step(control, x, y)
        for step in (step_a, step_b):  # trace and warm up
            for _ in range(3):
                step()
        before = step_ratio(step_a, step_b, steps)
        before_ms = step_ms(step_a, max(3, steps // 3))
        elapsed, report = timed(lambda p=params, fn=loss: gg.check(fn, p, sample=16, directions=1))
        after = step_ratio(step_a, step_b, steps)
        after_ms = step_ms(step_a, max(3, steps // 3))
        # A deliberate sparse write: the value already there, so only the mode changes.
        kernel.scatter_nd_update([[0, 0]], [kernel[0, 0]])
        sparse = step_ratio(step_a, step_b, steps)
        sparse_ms = step_ms(step_a, max(3, steps // 3))
        rows.append(
            f"| {kind} | {report.status}, {report.evaluations} evaluations, {ms(elapsed)} ms "
            f"| {before:.3f} ({before_ms:.1f} ms) | **{after:.3f}** ({after_ms:.1f} ms) "
            f"| {after / before:.3f} | {sparse:.3f} ({sparse_ms:.1f} ms) "
            f"| **{sparse / before:.2f}** |"
        )
    return [
        "## 2. Copy-on-read: training speed after a check",
        "",
        "A 2048 -> 4096 (tanh) -> 10 network (8.4M parameters; the big kernel is 32 MB), "
        f"compiled SGD step on a batch of 8. Each cell: median over {steps} steps of the "
        "step time divided by an identical, never-checked control model's step time, "
        "measured step by step in alternation (the subject's own median step time in "
        "parentheses). The check is `gg.check(loss, model, sample=16, directions=1)`; "
        "the sparse write is one `scatter_nd_update` of one element of the big kernel, with "
        "the value already there.",
        "",
        "| model | the check | before the check | after the check | after / before "
        "| after one sparse write | sparse / before |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "After the check, training runs at the speed it ran before (ratio ~1.0); after one "
        "sparse write, every read of the kernel copies 32 MB first, and stays so for the "
        "rest of training (a later dense assign does not switch it back).",
        "",
    ]


# -- 3. against tf.test.compute_gradient ---------------------------------------------------------


def small_problem(bug: bool) -> tuple[list[tf.Variable], Callable[..., Any]]:
    """A 20-16-4 tanh MLP, batch 32, whose second matmul has a hand-written gradient."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((32, 20)).astype(np.float32))
    y = tf.constant(rng.standard_normal((32, 4)).astype(np.float32))
    names = ("W1", "b1", "W2", "b2")
    shapes = ((20, 16), (16,), (16, 4), (4,))
    params = [
        tf.Variable((0.3 * rng.standard_normal(s)).astype(np.float32), name=n)
        for n, s in zip(names, shapes, strict=True)
    ]

    @tf.custom_gradient
    def matmul(a: Any, w: Any) -> Any:
        def grad(dy: Any) -> Any:
            dw = tf.matmul(a, dy, transpose_a=True)
            return tf.matmul(dy, w, transpose_b=True), (1.05 * dw if bug else dw)

        return tf.matmul(a, w), grad

    def loss(w1: Any, b1: Any, w2: Any, b2: Any) -> Any:
        return tf.reduce_mean(tf.square(matmul(tf.tanh(x @ w1 + b1), w2) + b2 - y))

    return params, loss


def peers_section(reps: int) -> list[str]:
    rows = []
    for bug in (False, True):
        params, loss = small_problem(bug)
        n = sum(int(np.prod(variable.shape)) for variable in params)

        def peer(p: list[tf.Variable] = params, fn: Callable[..., Any] = loss) -> float:
            theoretical, numerical = tf.test.compute_gradient(fn, [tf.identity(v) for v in p])
            return max(
                float(np.max(np.abs(t - m))) for t, m in zip(theoretical, numerical, strict=True)
            )

        def ours(
            p: list[tf.Variable] = params, fn: Callable[..., Any] = loss, **options: Any
        ) -> Callable[[], Any]:
            return lambda: gg.check(lambda vs: fn(*vs), p, seed=0, **options)

        contenders: list[tuple[str, Callable[[], Any]]] = [
            ("tf.test.compute_gradient", peer),
            ("gradguard, default", ours()),
            ('gradguard, sample="all"', ours(sample="all", directions=0)),
        ]
        for label, run in contenders:
            runs = [timed(run) for _ in range(reps)]
            elapsed = median([t for t, _ in runs])
            result = runs[-1][1]
            if isinstance(result, gg.CheckReport):
                verdict = f"{result.status}" + (
                    f": {', '.join(result.failed)}" if result.failed else ""
                )
                tracing = median([float(r.notes["trace_s"]) for _, r in runs])
                what = (
                    f"{result.evaluations} compiled evaluations (of the time, tracing: "
                    f"{ms(tracing)} ms), difference {result.difference:.2e}"
                )
            else:
                verdict = "(no verdict: the caller picks a threshold)"
                what = f"{2 * n} eager evaluations + 1 Jacobian, max abs error {result:.2e}"
            rows.append(
                f"| {'planted 5% bug in dW2' if bug else 'correct'} | {label} | {ms(elapsed)} "
                f"| {what} | {verdict} |"
            )
    return [
        "## 3. Against tf.test.compute_gradient",
        "",
        "Loss: a 20 -> 16 (tanh) -> 4 MLP, batch 32, MSE, 404 float32 parameters in four "
        "tf.Variables (W1, b1, W2, b2); the second matmul has a hand-written "
        "`tf.custom_gradient`, correct or with dW2 scaled by 1.05. `tf.test.compute_gradient` "
        "perturbs every element of every argument, eagerly, and returns both Jacobians; "
        f"gradguard checks the variables with compiled evaluations. Median of {reps}.",
        "",
        "| gradient | tool | time (ms) | work | verdict |",
        "|---|---|---:|---|---|",
        *rows,
        "",
    ]


# -- 4. numerics ---------------------------------------------------------------------------------


def numerics_section(inits: int, seeds: int) -> list[str]:
    from zoo import tf_models

    rows = []
    per_case: dict[str, dict[str, str]] = {}
    for precision in ("auto", "native"):
        label = "float64 trace (default)" if precision == "auto" else "native float32"
        checks = false_alarms = missed = extra = 0
        worst_correct = 0.0
        evaluations: list[int] = []
        for case in tf_models.all_cases():
            wrong = 0
            for init in range(inits):
                keras.utils.set_random_seed(1000 + init)
                model, loss = case.build()
                for seed in range(seeds):
                    report = gg.check(loss, TFParams(model, precision=precision), seed=seed)
                    checks += 1
                    evaluations.append(report.evaluations)
                    failed = set(report.failed)
                    false_alarms += int(not case.corrupted and bool(failed))
                    missed += len(case.corrupted - failed)
                    extra += len(failed - case.corrupted)
                    wrong += int(failed != case.corrupted)
                    for param in report.params:
                        # Near-zero gradients (a bias before BatchNorm) are judged against
                        # the model's scale, not by their own relative difference: left out.
                        if (
                            param.name not in case.corrupted
                            and param.status == "pass"
                            and abs(param.worst_analytic or 0.0) > 1e-6
                        ):
                            worst_correct = max(worst_correct, param.difference)
            per_case.setdefault(case.name, {})[label] = f"{wrong} / {inits * seeds}"
        rows.append(
            f"| {label} | {checks} | {false_alarms} | {missed} | {extra} "
            f"| {worst_correct:.1e} | {median([float(e) for e in evaluations]):.0f} |"
        )
    labels = ["float64 trace (default)", "native float32"]
    case_rows = [
        f"| {name} | " + " | ".join(verdicts[label] for label in labels) + " |"
        for name, verdicts in per_case.items()
    ]
    return [
        "## 4. Numerics: the Keras zoo in float64 and in float32",
        "",
        f"Every case of `tests/zoo/tf_models.py` ({len(tf_models.correct_cases())} correct "
        "float32 models: a custom-gradient MLP, a CNN with Conv2D + BatchNormalization + "
        "ReLU + MaxPool + Dropout + L2 in inference and in training mode, a GRU and a "
        f"SimpleRNN net; {len(tf_models.bug_cases())} planted bugs: a doubled kernel "
        "gradient and a halved input gradient in a tf.custom_gradient, a 0.1% error in "
        "the same kernel gradient, a misplaced tf.stop_gradient), "
        f"{inits} weight initializations x {seeds} check seeds each, default settings.",
        "",
        "| evaluation | checks | false alarms (a correct model failed) | corrupted tensors "
        "missed | uncorrupted tensors failed | largest difference of a passing uncorrupted "
        "tensor | median evaluations |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Checks whose verdict was wrong (a correct model failed, or the failing tensors were "
        "not exactly the corrupted ones), per case:",
        "",
        "| case | " + " | ".join(labels) + " |",
        "|---|---:|---:|",
        *case_rows,
        "",
    ]


# -- report ---------------------------------------------------------------------------------------


def header(quick: bool) -> list[str]:
    return tensorflow_header(
        "gradguard TensorFlow adapter benchmark", quick, "; TensorFlow's default thread pools"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark gradguard's TensorFlow adapter.")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: few repetitions (~20 s)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines = header(args.quick)
    if args.quick:
        lines += speed_section(reps=2)
        lines += copy_on_read_section(steps=6)
        lines += peers_section(reps=1)
    else:
        lines += speed_section(reps=7)
        lines += copy_on_read_section(steps=30)
        lines += peers_section(reps=3)
        lines += numerics_section(inits=4, seeds=5)
    lines.append(f"_Total benchmark time: {time.perf_counter() - started:.1f} s._")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
