"""Benchmark of joint screening on the TensorFlow/Keras adapter: the decoder of
``bench_screen.py`` built in Keras 3.

Model (float32, Keras 3 on the TensorFlow backend, checked as ``gg.check(model_loss(model, x,
y), model)``: the default float64 trace, the native float32 gradient under test): token
embedding (vocabulary 1,000), learned positions (context 64), 4 pre-LN blocks of 4-head causal
attention (one fused ``qkv`` Dense and a ``proj`` Dense, as in the PyTorch decoder) and a 4x
GELU MLP, d_model 128, a final LayerNorm and an untied head; batch 8: 1.06M parameters in 54
tensors, the same counts as the PyTorch decoder.

Cases: the correct model with both strategies (same seeds); with the default strategy, two
planted bugs in the model's own backward (``keras.ops.custom_gradient`` inside a layer): a
0.1% scale error in one tensor's gradient (``blocks_2_proj``'s kernel) and x2 on one element
of the first MLP kernel of block 1 (128x512). For each: the verdict, the tensors named as wrong
(and whether they are exactly the wrong ones), loss evaluations, wall time of a warm check
(the ``model_loss`` keeps its traces from an earlier check), and that time in training steps
of the same model (``train_on_batch`` with AdamW, compiled, the median of warm steps).

BLAS is pinned to one thread, TensorFlow keeps its default thread pools (as in
``bench_tensorflow.py``). Run ``python benchmarks/bench_screen_keras.py`` (a few minutes on 2
cores) or ``--quick`` (one seed, correct model with the default strategy only). Only stdout is
written.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before NumPy loads its thread pool
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("", "adapters")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard_tensorflow import model_loss  # noqa: E402

VOCAB, CONTEXT, D_MODEL, HEADS, BLOCKS, BATCH = 1000, 64, 128, 4, 4, 8


def _identity_with_gradient(bug: str) -> Callable[[Any], Any]:
    """``w -> w`` whose backward is wrong: ``scale`` multiplies the gradient by 1.001,
    ``element`` doubles its element [3, 5]."""

    @ops.custom_gradient
    def planted(w: Any) -> Any:
        def grad(*args: Any, upstream: Any = None) -> Any:
            dy = args[0] if upstream is None else upstream
            if bug == "scale":
                return dy * 1.001
            mask = np.ones(tuple(dy.shape), dtype=np.float64)
            mask[3, 5] = 2.0
            return dy * ops.cast(mask, dy.dtype)

        return w, grad

    return planted


class BuggyDense(keras.layers.Dense):
    """A Dense layer whose kernel's gradient goes through a planted bug (or none)."""

    def __init__(self, units: int, bug: str = "", **kwargs: Any) -> None:
        super().__init__(units, **kwargs)
        self.bug = bug

    def call(self, inputs: Any) -> Any:
        kernel = self.kernel
        if self.bug:
            kernel = _identity_with_gradient(self.bug)(kernel)
        out = ops.matmul(inputs, kernel) + self.bias
        return self.activation(out)


class Positions(keras.layers.Layer):
    """Learned positions added to the token embeddings."""

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            shape=(CONTEXT, D_MODEL),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="table",
        )

    def call(self, x: Any) -> Any:
        return x + self.table[None, : x.shape[1]]


class Block(keras.layers.Layer):
    """Pre-LN transformer block: causal multi-head attention and a 4x GELU MLP."""

    def __init__(self, index: int, bugs: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = f"blocks_{index}"
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln1")
        self.qkv = BuggyDense(3 * D_MODEL, bugs.get("qkv", ""), name=f"{name}_qkv")
        self.proj = BuggyDense(D_MODEL, bugs.get("proj", ""), name=f"{name}_proj")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln2")
        self.fc1 = BuggyDense(
            4 * D_MODEL, bugs.get("fc1", ""), activation="gelu", name=f"{name}_fc1"
        )
        self.fc2 = BuggyDense(D_MODEL, bugs.get("fc2", ""), name=f"{name}_fc2")

    def call(self, x: Any) -> Any:
        _, t, d = x.shape
        dh = d // HEADS
        q, k, v = (
            ops.transpose(ops.reshape(z, (-1, t, HEADS, dh)), (0, 2, 1, 3))
            for z in ops.split(self.qkv(self.ln1(x)), 3, axis=-1)
        )
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(dh)
        causal = np.tril(np.ones((t, t), dtype=bool))
        scores = ops.where(causal, scores, ops.cast(-1e9, scores.dtype))
        a = ops.matmul(ops.softmax(scores, axis=-1), v)
        a = ops.reshape(ops.transpose(a, (0, 2, 1, 3)), (-1, t, d))
        x = x + self.proj(a)
        return x + self.fc2(self.fc1(self.ln2(x)))


def decoder(bugs: dict[tuple[int, str], str] | None = None) -> keras.Model:
    """The decoder, compiled with its loss and AdamW; ``bugs[(block, layer)] = "scale"``."""
    keras.utils.set_random_seed(0)
    bugs = bugs or {}
    idx = keras.Input((CONTEXT,), dtype="int32", batch_size=BATCH)
    x = keras.layers.Embedding(VOCAB, D_MODEL, name="tokens")(idx)
    x = Positions(name="positions")(x)
    for i in range(BLOCKS):
        x = Block(i, {layer: bug for (b, layer), bug in bugs.items() if b == i}, name=f"b{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="ln_f")(x)
    logits = keras.layers.Dense(VOCAB, name="head")(x)
    model = keras.Model(idx, logits, name="decoder")
    # Non-trivial LayerNorm affine parameters, as after some training.
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        path = variable.path
        if "ln" in path and path.endswith("gamma"):
            variable.assign(variable.numpy() + 0.1 * rng.standard_normal(variable.shape))
        elif "ln" in path and path.endswith("beta"):
            variable.assign(variable.numpy() + 0.05 * rng.standard_normal(variable.shape))
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def batch() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(BATCH, CONTEXT + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def training_step_s(model: keras.Model, steps: int) -> float:
    """Median wall time of one compiled AdamW ``train_on_batch`` of a twin of the model."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = batch()
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        twin.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def run_case(
    label: str,
    model: keras.Model,
    wrong: set[str],
    step_s: float,
    seeds: list[int],
    strategies: list[str],
) -> list[str]:
    x, y = batch()
    loss = model_loss(model, x, y)
    before = [v.numpy().tobytes() for v in model.variables]
    cold_s = time.perf_counter()
    gg.check(loss, model, seed=seeds[0])  # traces: the table's checks are warm
    cold_s = time.perf_counter() - cold_s
    rows = []
    for strategy in strategies:
        evaluations, times, verdicts, named_ok, joint = [], [], [], True, set()
        for seed in seeds:
            start = time.perf_counter()
            report = gg.check(loss, model, seed=seed, strategy=strategy)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
            evaluations.append(report.evaluations)
            verdicts.append(report.status.value)
            joint.add(sum(p.judged_by == "screen" for p in report.params))
            if set(report.failed) != wrong:
                named_ok = False
            if os.environ.get("BENCH_SCREEN_VERBOSE"):
                print(label, strategy, report.failed, report.notes, file=sys.stderr)
        t = statistics.median(times)
        rows.append(
            f"| {label} | {strategy} | {'/'.join(sorted(set(verdicts)))} | "
            f"{'yes' if named_ok else 'NO'} | {'/'.join(map(str, sorted(joint)))} | "
            f"{min(evaluations)}-{max(evaluations)} | {t:.2f} | {t / step_s:.0f} | "
            f"{cold_s:.1f} |"
        )
    restored = before == [v.numpy().tobytes() for v in model.variables]
    if not restored:
        rows.append(f"| {label} | VARIABLES CHANGED BY THE CHECK | | | | | | | |")
    return rows


def bound(n_tensors: int, size: int) -> int:
    return int(40 + 2 * math.log2(n_tensors) + 4 * math.log2(size))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    seeds = [0] if args.quick else list(range(args.seeds))
    model = decoder()
    n_params = model.count_params()
    n_tensors = len(model.trainable_variables)
    step_s = training_step_s(model, 5 if args.quick else 20)
    lines = [
        "| model, case | strategy | verdict | wrong tensors named exactly | tensors cleared "
        "jointly | evaluations | seconds (warm, median) | training steps | first check, "
        "tracing included (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    strategies = ["screen"] if args.quick else ["screen", "per-tensor"]
    lines += run_case("decoder, correct", model, set(), step_s, seeds, strategies)
    if not args.quick:
        scale = decoder({(2, "proj"): "scale"})
        lines += run_case(
            "decoder, 0.1% scale error (custom_gradient)",
            scale,
            {"b2/blocks_2_proj/kernel"},
            step_s,
            seeds,
            ["screen"],
        )
        element = decoder({(1, "fc1"): "element"})
        lines += run_case(
            "decoder, x2 on one element (custom_gradient)",
            element,
            {"b1/blocks_1_fc1/kernel"},
            step_s,
            seeds,
            ["screen"],
        )
    print("## Joint screening on the TensorFlow/Keras adapter (Keras 3, float32, float64 trace)\n")
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}; {n_params:,} parameters "
        f"in {n_tensors} tensors; one AdamW train_on_batch: {step_s * 1e3:.1f} ms\n"
    )
    print(
        f"Failing-case budget 40 + 2 log2(T) + 4 log2(n): 0.1% scale (T={n_tensors}, "
        f"n=16,384) {bound(n_tensors, 16384)}; x2 element (n=65,536) "
        f"{bound(n_tensors, 65536)}\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
