"""Benchmark of gradguard's PyTorch adapter against torch.autograd.gradcheck, on the same function.

Every comparison is made in one run, with the repetitions interleaved (gradguard, peer,
gradguard, peer, ...) and medians reported, so that noise from other work on the machine hits
both sides alike. Only ratios are meaningful across machines; no test asserts a timing.

Sections:

1. **Default check vs ``gradcheck(fast_mode=True)``** on the scalar loss of a 784-64-10 tanh
   MLP (50,890 float64 parameters, batch 16), correct, and with a planted weight-gradient
   scale error (1% and 0.1%) in a custom autograd Function: time, and what each tool says.
2. **``sample="all"`` vs ``gradcheck(fast_mode=False)``**, every coordinate of a 784-8-10 MLP
   (6,370 parameters).
3. **Engine overhead**: a check against a raw loop that replays exactly the check's own
   writes and evaluations (recorded from the check through a proxy view) with plain in-place
   torch ops, and against the time spent inside the loss during the check (a stopwatch).
4. **Batching perturbations** with ``torch.func.functional_call`` + ``vmap``: B perturbed copies
   of one tensor evaluated in one batched call, against B sequential in-place evaluations,
   for B = 1 .. 256: where batching starts to pay (the crossover).
5. **float32 numerics**: the float32 models of the zoo (tests/zoo/torch_models.py) checked
   in a float64 shadow copy (the default) and in place in float32; and which loss functions
   evaluate in float64 with the shadow's input hooks alone, and with the Float64Mode.

Intra-op and BLAS threads are pinned to 1 (set before torch and NumPy are imported, plus
``torch.set_num_threads(1)``), so one evaluation costs the same inside and outside a check.

Run ``python benchmarks/bench_torch.py`` (about 40 s on 2 cores, a third of it gradcheck
reporting the 1% bug) or ``--quick`` (one repetition, fewer sizes and seeds, no gradcheck on
the bugs, ~6 s: a smoke test, not a measurement). Only stdout is written.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _variable in _THREAD_VARIABLES:
    os.environ[_variable] = "1"  # before NumPy and torch load their thread pools

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import Stopwatch, median, ms, timed  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402
from torch.func import functional_call, vmap  # noqa: E402

import gradguard as gg  # noqa: E402
from gradguard.engine import Settings, run_check  # noqa: E402
from gradguard.kit.contract import FlatView  # noqa: E402
from gradguard_torch._adapter import TorchAdapter  # noqa: E402
from gradguard_torch._precision import Float64Mode, cast_inputs  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from zoo import torch_models  # noqa: E402

Tensor = torch.Tensor


# -- helpers ---------------------------------------------------------------------------------


class ScaledLinear(torch.autograd.Function):
    """``x W^T + b`` whose weight gradient is ``scale`` times the truth (a planted bug)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.scale = scale
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        return g @ weight, ctx.scale * (g.T @ x), g.sum(0), None


class Mlp(nn.Module):
    """784 -> hidden (tanh) -> 10; the output layer may carry a weight-gradient scale error."""

    def __init__(self, hidden: int, scale: float = 1.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc1(x))
        if self.scale == 1.0:
            return self.fc2(h)  # type: ignore[no-any-return]
        out: Tensor = ScaledLinear.apply(h, self.fc2.weight, self.fc2.bias, self.scale)
        return out


class Problem:
    """An MLP, its data, the module loss for gradguard and the same function for gradcheck."""

    def __init__(self, hidden: int, batch: int, scale: float = 1.0, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = Mlp(hidden, scale).double()
        self.x = torch.randn(batch, 784, dtype=torch.float64)
        self.y = torch.randn(batch, 10, dtype=torch.float64)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.size = sum(p.numel() for p in self.model.parameters())

    def loss(self, model: nn.Module) -> Tensor:
        return F.mse_loss(model(self.x), self.y)

    def function(self, *tensors: Tensor) -> Tensor:
        """The same loss as a function of the parameter tensors (gradcheck's interface)."""
        return self.loss_of(dict(zip(self.names, tensors, strict=True)))

    def loss_of(self, params: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(functional_call(self.model, params, (self.x,)), self.y)

    def inputs(self) -> list[Tensor]:
        return [p.detach().clone().requires_grad_(True) for p in self.model.parameters()]


def run_gradcheck(problem: Problem, fast: bool) -> tuple[bool, str, int]:
    """gradcheck's verdict, the first line of its message, and how often it called the function."""
    counter = Stopwatch(problem.function)
    try:
        gradcheck(counter, problem.inputs(), fast_mode=fast)
    except Exception as exc:  # GradcheckError: a mismatch
        return False, str(exc).splitlines()[0], counter.calls
    return True, "", counter.calls


# -- 1. default check vs gradcheck(fast_mode=True) -------------------------------------------


def fast_mode_section(reps: int, peer_on_bugs: bool = True) -> list[str]:
    problem = Problem(hidden=64, batch=16)
    before = [p.detach().clone() for p in problem.model.parameters()]
    modes: list[tuple[str, dict[str, Any]]] = [
        ("gradguard default (screen: 8 coordinates read jointly + 2 joint probes)", {}),
        ('gradguard strategy="per-tensor"', {"strategy": "per-tensor"}),
        ("gradguard sample=0 (the 2 joint probes only)", {"sample": 0}),
        ("gradguard sample=0, directions=1", {"sample": 0, "directions": 1}),
    ]
    run_gradcheck(problem, fast=True)  # warm-up
    gg.check(problem.loss, problem.model, seed=0)
    times: dict[str, list[float]] = {label: [] for label, _ in modes}
    times["gradcheck fast_mode=True"] = []
    evaluations: dict[str, int] = {}
    for rep in range(reps):
        t, (ok, _, calls) = timed(lambda: run_gradcheck(problem, fast=True))
        times["gradcheck fast_mode=True"].append(t)
        evaluations["gradcheck fast_mode=True"] = calls
        for label, options in modes:
            t, report = timed(
                lambda o=options, r=rep: gg.check(problem.loss, problem.model, seed=r, **o)
            )
            times[label].append(t)
            evaluations[label] = report.evaluations + report.gradient_calls
            assert report.passed and ok
    t_peer = median(times["gradcheck fast_mode=True"])
    rows = [
        f"| {label} | {evaluations[label]} | {ms(median(values))} "
        f"| **{median(values) / t_peer:.2f}** |"
        for label, values in times.items()
    ]
    restored = all(
        torch.equal(a, b) for a, b in zip(before, problem.model.parameters(), strict=True)
    )

    bug_rows = []
    for scale in (1.01, 1.001):
        buggy = Problem(hidden=64, batch=16, scale=scale)
        if peer_on_bugs:
            t_peer_bug, (ok, message, calls) = timed(lambda b=buggy: run_gradcheck(b, fast=True))
            said = message.replace("|", "/") if not ok else "passed (no error raised)"
            bug_rows.append(
                f"| {scale - 1:.1%} | gradcheck fast_mode=True | {calls:,} | {ms(t_peer_bug)} "
                f"| {said} |"
            )
        t_gg_bug, report = timed(lambda b=buggy: gg.check(b.loss, b.model, seed=0))
        named = ", ".join(report.failed) or "none"
        bug_rows.append(
            f"| {scale - 1:.1%} | gradguard default | {report.evaluations + 1} "
            f"| {ms(t_gg_bug)} | {report.status}: {named}; "
            f"hint: {report[report.failed[0]].hint if report.failed else ''} |"
        )
    return [
        "## 1. Default check vs torch.autograd.gradcheck(fast_mode=True)",
        "",
        f"Function: MSE loss of a 784 -> 64 (tanh) -> 10 MLP, batch 16, float64, "
        f"{problem.size:,} parameters in 4 tensors. gradcheck gets it as a function of the 4 "
        "parameter tensors (functional_call on the same module, default tolerances); gradguard "
        "gets `gg.check(lambda m: F.mse_loss(m(x), y), model)` (autograd, no grad). "
        f"Median of {reps} interleaved repetitions. *calls* = loss evaluations plus "
        "gradient calls (gradcheck: calls of the function, all with autograd on).",
        "",
        "| tool | calls | time (ms) | time / gradcheck fast |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Parameters bit-identical after all checks: {'yes' if restored else 'NO'}.",
        "",
        "The same MLP with a planted bug: the output layer's weight gradient scaled by 1.01 and "
        "by 1.001 (a custom autograd Function), one run each:",
        "",
        "| bug | tool | calls | time (ms) | what it says |",
        "|---|---|---:|---:|---|",
        *bug_rows,
        "",
    ]


# -- 2. sample="all" vs gradcheck(fast_mode=False) --------------------------------------------


def slow_mode_section(reps: int) -> list[str]:
    problem = Problem(hidden=8, batch=16)
    peer_times, check_times = [], []
    evaluations = calls = 0
    for rep in range(reps):
        t, (ok, _, calls) = timed(lambda: run_gradcheck(problem, fast=False))
        peer_times.append(t)
        t, report = timed(lambda r=rep: gg.check(problem.loss, problem.model, sample="all", seed=r))
        check_times.append(t)
        evaluations = report.evaluations + report.gradient_calls
        assert ok and report.passed
    t_peer, t_check = median(peer_times), median(check_times)
    return [
        '## 2. sample="all" vs torch.autograd.gradcheck(fast_mode=False)',
        "",
        f"Every coordinate of a 784 -> 8 (tanh) -> 10 MLP, batch 16, float64: "
        f"{problem.size:,} parameters. Median of {reps} interleaved repetitions.",
        "",
        "| tool | calls | time (ms) | per call (us) | time / gradcheck |",
        "|---|---:|---:|---:|---:|",
        f"| gradcheck fast_mode=False | {calls:,} | {ms(t_peer)} | {t_peer / calls * 1e6:.1f} "
        "| 1.00 |",
        f'| gradguard sample="all" | {evaluations:,} | {ms(t_check)} '
        f"| {t_check / evaluations * 1e6:.1f} | **{t_check / t_peer:.2f}** |",
        "",
    ]


# -- 3. engine overhead vs a raw loop of the same evaluations ----------------------------------


class RecordingView(FlatView):
    """Passes everything to a real view, and records the writes and evaluations in order."""

    def __init__(self, view: FlatView) -> None:
        self.view = view
        self.layout = view.layout
        self.adapter = view.adapter
        self.script: list[tuple[str, int, Any, Any]] = []

    def original(self, segment: int) -> Any:
        return self.view.original(segment)

    def write(self, segment: int, index: Any, values: Any) -> Any:
        self.script.append(
            ("write", segment, None if index is None else index.copy(), values.copy())
        )
        return self.view.write(segment, index, values)

    def reset(self, segment: int, index: Any) -> None:
        self.script.append(("reset", segment, None if index is None else index.copy(), None))
        self.view.reset(segment, index)

    def evaluate(self) -> float:
        self.script.append(("evaluate", -1, None, None))
        return self.view.evaluate()

    @property
    def loss_dtype(self) -> Any:
        return self.view.loss_dtype

    def gradient(self) -> Any:
        return self.view.gradient()

    def restore(self) -> None:
        self.view.restore()


def compile_script(
    model: nn.Module, script: list[tuple[str, int, Any, Any]]
) -> list[Callable[[], Any]]:
    """The recorded writes as plain torch ops on the parameters' storage (no gradguard code)."""
    flats = [p.data.view(-1) for p in model.parameters()]
    saved = [f.clone() for f in flats]
    steps: list[tuple[str, Any, Any, Any]] = []
    for kind, s, index, values in script:
        if kind == "evaluate":
            steps.append(("evaluate", None, None, None))
        elif index is None:
            source = saved[s] if kind == "reset" else torch.from_numpy(values)
            steps.append(("copy", flats[s], source, None))
        elif index.size == 1:
            value = float(saved[s][int(index[0])]) if kind == "reset" else float(values[0])
            steps.append(("item", flats[s], int(index[0]), value))
        else:
            where = torch.from_numpy(index)
            source = saved[s][where] if kind == "reset" else torch.from_numpy(values)
            steps.append(("index", flats[s], where, source))
    return steps  # type: ignore[return-value]


def raw_loop(
    model: nn.Module, loss: Callable[[nn.Module], Tensor], steps: list[Any], gradients: int
) -> float:
    """One autograd gradient, then the recorded writes and evaluations, as plain torch code."""
    params = list(model.parameters())
    sink = 0.0
    start = time.perf_counter()
    for _ in range(gradients):
        torch.autograd.grad(loss(model), params)
    with torch.no_grad():
        for kind, flat, a, b in steps:
            if kind == "evaluate":
                sink += loss(model).item()
            elif kind == "item":
                flat[a] = b
            elif kind == "copy":
                flat.copy_(a)
            else:
                flat[a] = b
    elapsed = time.perf_counter() - start
    assert math.isfinite(sink)
    return elapsed


class NullView(FlatView):
    """The layout of a real view, and nothing behind it: what the engine costs on its own."""

    adapter = "null"

    def __init__(self, view: FlatView) -> None:
        self.layout = view.layout
        self.originals = [view.original(s).copy() for s in range(len(view.layout))]
        self.current = [o.copy() for o in self.originals]

    def original(self, segment: int) -> Any:
        return self.originals[segment]

    def write(self, segment: int, index: Any, values: Any) -> Any:
        target = self.current[segment]
        target[slice(None) if index is None else index] = values
        return values

    def reset(self, segment: int, index: Any) -> None:
        where = slice(None) if index is None else index
        self.current[segment][where] = self.originals[segment][where]

    def evaluate(self) -> float:
        return 1.0

    @property
    def loss_dtype(self) -> Any:
        return np.dtype(np.float64)

    def gradient(self) -> Any:
        return np.zeros(self.layout.size)

    def restore(self) -> None:
        pass


def overhead_section(reps: int, batches: tuple[int, ...]) -> list[str]:
    rows = []
    for hidden, batch, options, label in [
        *((64, b, {}, "default") for b in batches),
        (8, 16, {"sample": "all"}, 'sample="all"'),
    ]:
        problem = Problem(hidden=hidden, batch=batch)
        before = [p.detach().clone() for p in problem.model.parameters()]
        adapter = TorchAdapter()
        check_times, raw_times, inside_times, engine_times = [], [], [], []
        evaluations = 0
        for rep in range(reps + 1):  # the first repetition is a warm-up
            settings = Settings(seed=rep, **options)
            with adapter.open(problem.model, problem.loss, None) as view:
                recorder = RecordingView(view)  # an untimed run records the probes
                report = run_check(recorder, settings)
                null = NullView(view)
            steps = compile_script(problem.model, recorder.script)
            loss = Stopwatch(problem.loss)
            start = time.perf_counter()
            with adapter.open(problem.model, loss, None) as view:
                run_check(view, settings)  # the same seed: the same probes
            check = time.perf_counter() - start
            raw = raw_loop(problem.model, problem.loss, steps, report.gradient_calls)
            engine = timed(lambda n=null, st=settings: run_check(n, st))[0]
            evaluations = report.evaluations
            if rep:
                check_times.append(check)
                raw_times.append(raw)
                inside_times.append(loss.elapsed)
                engine_times.append(engine)
        t_check, t_raw, t_inside = median(check_times), median(raw_times), median(inside_times)
        t_engine = median(engine_times)
        restored = all(
            torch.equal(a, b) for a, b in zip(before, problem.model.parameters(), strict=True)
        )
        rows.append(
            f"| 784-{hidden}-10, batch {batch}, {label} | {problem.size:,} | {evaluations:,} "
            f"| {ms(t_check)} | {ms(t_raw)} | {ms(t_inside)} | {ms(t_engine)} "
            f"| {(t_check - t_raw) / evaluations * 1e6:.1f} | **{t_check / t_raw:.3f}** "
            f"| {t_check / t_inside:.3f} | {'yes' if restored else 'NO'} |"
        )
    return [
        "## 3. Engine overhead: a check vs a raw loop of the same evaluations (target <= 1.10)",
        "",
        "An untimed check runs through a proxy view that records every write, reset and "
        "evaluation; the timed check (same seed, so the same probes) runs without it; the raw "
        "loop replays the recorded script with plain in-place torch ops on the parameters' "
        "storage (`flat[i] = v`, `flat.copy_(...)`), `loss(model).item()` under no_grad, and "
        "one `torch.autograd.grad`. Both sides make the same forward passes and the same "
        "writes; the difference is gradguard's own work. *in-check loss*: the time spent "
        "inside the loss callable during the timed check (a stopwatch). *engine alone*: the "
        "same check (same layout, same seed) on a view with nothing behind it (no torch, a "
        "constant loss): the engine's own cost (directions, bookkeeping, judging). Median of "
        f"{reps} interleaved repetitions.",
        "",
        "| model, mode | parameters | evaluations | T_check (ms) | T_raw (ms) "
        "| in-check loss (ms) | engine alone (ms) | overhead per evaluation (us) "
        "| T_check / T_raw | T_check / in-check loss | bit-identical after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


# -- 4. batching perturbations with vmap --------------------------------------------------------


class Perturbations:
    """B single-coordinate perturbations of one tensor, evaluated one by one or in one vmap."""

    STEP = 6e-6

    def __init__(self, problem: Problem, name: str, b: int) -> None:
        self.problem = problem
        self.name = name
        self.params = {k: v.detach() for k, v in problem.model.named_parameters()}
        self.weight = self.params[name]
        self.flat = self.weight.view(-1)
        generator = torch.Generator().manual_seed(b)
        self.index = torch.randint(0, self.weight.numel(), (b,), generator=generator)
        self.positions = self.index.tolist()
        self.batched_loss = vmap(self.one)

    def one(self, weight: Tensor) -> Tensor:
        return self.problem.loss_of({**self.params, self.name: weight})

    def sequential(self) -> None:
        with torch.no_grad():
            for i in self.positions:
                x = float(self.flat[i])
                self.flat[i] = x + self.STEP
                self.problem.loss(self.problem.model).item()
                self.flat[i] = x

    def vectorized(self) -> None:
        n = len(self.positions)
        with torch.no_grad():
            copies = self.weight.unsqueeze(0).repeat(n, *([1] * self.weight.dim()))
            copies.view(n, -1)[torch.arange(n), self.index] += self.STEP
            self.batched_loss(copies).tolist()


def batching_section(reps: int, sizes: tuple[int, ...]) -> list[str]:
    rows = []
    crossovers = {}
    for hidden in (64, 8):
        problem = Problem(hidden=hidden, batch=16)
        crossover = None
        for b in sizes:
            perturbations = Perturbations(problem, "fc1.weight", b)
            perturbations.sequential()  # warm-up
            perturbations.vectorized()
            seq_times, vec_times = [], []
            for _ in range(reps):
                seq_times.append(timed(perturbations.sequential)[0])
                vec_times.append(timed(perturbations.vectorized)[0])
            t_seq, t_vec = median(seq_times), median(vec_times)
            if crossover is None and t_vec < t_seq:
                crossover = b
            rows.append(
                f"| 784-{hidden}-10 | {b} | {t_seq / b * 1e6:.1f} | {t_vec / b * 1e6:.1f} "
                f"| **{t_seq / t_vec:.2f}** |"
            )
        crossovers[hidden] = crossover
    return [
        "## 4. Batching perturbations: torch.func.functional_call + vmap vs the sequential loop",
        "",
        "B perturbed copies of `fc1.weight` (one coordinate each, the sample the engine draws) "
        "evaluated by one `vmap(functional_call(...))` call, against B in-place evaluations one "
        f"after the other; batch 16, float64. Median of {reps} interleaved repetitions.",
        "",
        "| model | B | sequential (us per evaluation) | vmap (us per evaluation) "
        "| speedup of vmap |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Crossover (smallest B where vmap wins): "
        + ", ".join(
            f"784-{h}-10: {'B = ' + str(c) if c else 'never, up to B = ' + str(sizes[-1])}"
            for h, c in crossovers.items()
        )
        + ".",
        "",
    ]


# -- 5. float32 numerics ------------------------------------------------------------------------


def numerics_section(seeds: int) -> list[str]:
    rows = []
    cases = [c for c in torch_models.all_cases() if c.dtype == torch.float32]
    for shadow in (True, False):
        adapter = TorchAdapter(shadow=shadow)
        for case in cases:
            mismatches, worst, times, evaluations = 0, 0.0, [], []
            for seed in range(seeds):
                model, loss = case.build()
                t, report = timed(lambda a=adapter, m=model, lo=loss, s=seed: _check(a, m, lo, s))
                times.append(t)
                evaluations.append(report.evaluations)
                if set(report.failed) != set(case.corrupted):
                    mismatches += 1
                rms = _gradient_rms(model, loss)
                scale = math.sqrt(statistics.fmean(r * r for r in rms.values()))
                for p in report.params:
                    if p.name not in case.corrupted and rms[p.name] > 1e-3 * scale:
                        worst = max(worst, p.difference)
            expected = ", ".join(sorted(case.corrupted)) or "(correct)"
            where = "float64 shadow" if shadow else "in place, float32"
            rows.append(
                f"| {case.name} | {expected} | {where} "
                f"| {mismatches}/{seeds} | {worst:.1e} | {int(statistics.median(evaluations))} "
                f"| {ms(median(times))} |"
            )
    return [
        "## 5. float32 numerics: float64 shadow copy vs in place in float32",
        "",
        "The float32 models of the zoo (tests/zoo/torch_models.py), in train mode (Dropout and "
        "BatchNorm active), checked with autograd and the default strategy over "
        f"{seeds} seeds. *wrong verdicts*: checks whose failing set differs from the planted "
        "bug's (a false alarm on a correct tensor, or a missed bug). *worst correct "
        "difference*: the largest relative difference of a correct tensor whose gradient RMS "
        "is above 1e-3 of the model's (tensors with a ~0 gradient, such as a conv bias before "
        "BatchNorm, are judged by the near-zero rule instead); tolerance 1e-6 in the shadow, "
        "1e-2 in float32.",
        "",
        "| case | corrupted | evaluation | wrong verdicts | worst correct difference "
        "| evaluations | time (ms) |",
        "|---|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        *loss_table(),
    ]


def _check(adapter: TorchAdapter, model: nn.Module, loss: Any, seed: int) -> Any:
    with adapter.open(model, loss, None) as view:
        return run_check(view, Settings(seed=seed))


def _gradient_rms(model: nn.Module, loss: Callable[[nn.Module], Tensor]) -> dict[str, float]:
    """Each parameter's gradient RMS (float64 autograd in a shadow; a near-zero test)."""
    shadow = _shadow(model)
    names = [n for n, _ in shadow.named_parameters()]
    with torch.random.fork_rng(devices=[]), Float64Mode():
        grads = torch.autograd.grad(loss(shadow), list(shadow.parameters()), allow_unused=True)
    return {
        n: 0.0 if g is None else float(g.square().mean().sqrt())
        for n, g in zip(names, grads, strict=True)
    }


def _shadow(model: nn.Module) -> nn.Module:
    import copy

    shadow = copy.deepcopy(model).double()
    for module in shadow.modules():
        module.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    return shadow


LOSSES: list[tuple[str, Callable[[Tensor, Tensor], Tensor]]] = [
    ("F.mse_loss(out, y)", lambda out, y: F.mse_loss(out, y)),
    ("F.l1_loss(out, y)", lambda out, y: F.l1_loss(out, y)),
    ("F.huber_loss(out, y)", lambda out, y: F.huber_loss(out, y)),
    (
        "F.binary_cross_entropy_with_logits(out, t)",
        lambda o, y: F.binary_cross_entropy_with_logits(o, y.sigmoid()),
    ),
    (
        "F.binary_cross_entropy(out.sigmoid(), t)",
        lambda o, y: F.binary_cross_entropy(o.sigmoid(), y.sigmoid()),
    ),
    ("F.cross_entropy(out, labels)", lambda o, y: F.cross_entropy(o, y.argmax(1))),
    (
        "F.cross_entropy(out, labels, weight=w)",
        lambda o, y: F.cross_entropy(o, y.argmax(1), weight=torch.ones(2)),
    ),
    (
        "F.kl_div(out.log_softmax(1), p)",
        lambda o, y: F.kl_div(o.log_softmax(1), y.softmax(1), reduction="batchmean"),
    ),
    ("((out - y) ** 2).mean()", lambda o, y: ((o - y) ** 2).mean()),
    ("(out @ y.T).mean()", lambda o, y: (o @ y.T).mean()),
]


def _loss_dtype(
    shadow: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, mode: bool
) -> str:
    """The dtype the loss comes out in on the shadow, or where and how it fails."""
    stage = "forward"
    try:
        with Float64Mode() if mode else nullcontext():
            value = loss(shadow(x), y)
            stage = "backward"
            torch.autograd.grad(value, list(shadow.parameters()))
    except RuntimeError as exc:
        return f"{stage} error: " + str(exc).splitlines()[0][:50]
    return str(value.dtype).removeprefix("torch.")


def loss_table() -> list[str]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=generator)
    y = torch.randn(8, 2, generator=generator)
    shadow = _shadow(nn.Linear(5, 2))
    rows = [
        f"| `{label}` | {_loss_dtype(shadow, loss, x, y, False)} "
        f"| {_loss_dtype(shadow, loss, x, y, True)} |"
        for label, loss in LOSSES
    ]
    return [
        "Loss functions on a float64 shadow whose inputs are lifted by forward pre-hooks, with "
        "the loss's own tensors (y, t, w) left in float32 as a closure holds them: the dtype the "
        "loss comes out in (forward and autograd backward both run), or the error (torch "
        + torch.__version__
        + "):",
        "",
        "| loss | pre-hooks only | pre-hooks + Float64Mode (gradguard) |",
        "|---|---|---|",
        *rows,
        "",
    ]


# -- report --------------------------------------------------------------------------------------


def header(quick: bool) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    threads = ", ".join(f"{v}={os.environ[v]}" for v in _THREAD_VARIABLES)
    return [
        "# gradguard PyTorch benchmark"
        + (" (--quick: a smoke test, 1 repetition; not a measurement)" if quick else ""),
        "",
        f"- date: {now}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"NumPy {np.__version__}, gradguard {gg.__version__}",
        f"- CPU: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} logical CPUs",
        f"- threads pinned: torch.set_num_threads(1), {threads}",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark gradguard's PyTorch adapter.")
    parser.add_argument("--quick", action="store_true", help="a smoke test (~6 s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    lines = header(args.quick)
    if args.quick:
        lines += fast_mode_section(reps=1, peer_on_bugs=False)
        lines += slow_mode_section(reps=1)
        lines += overhead_section(reps=1, batches=(16,))
        lines += batching_section(reps=1, sizes=(1, 16, 64))
        lines += numerics_section(seeds=1)
    else:
        lines += fast_mode_section(reps=21)
        lines += slow_mode_section(reps=3)
        lines += overhead_section(reps=7, batches=(16, 256))
        lines += batching_section(reps=5, sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        lines += numerics_section(seeds=10)
    lines.append(f"_Total benchmark time: {time.perf_counter() - started:.1f} s._")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
