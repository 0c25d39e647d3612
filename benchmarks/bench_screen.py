"""Benchmark of joint screening (``strategy="screen"``) against per-tensor probing, in PyTorch.

Models (float32, checked in the default float64 shadow, autograd gradients):

- **decoder**: a GPT-style decoder: token embedding (vocabulary 1,000), learned positions
  (context 64), 4 pre-LN blocks of 4-head causal attention and a 4x GELU MLP, d_model 128,
  a final LayerNorm and an untied head; batch 8: 1.06M parameters in 54 tensors.
- **deep**: a residual tanh MLP of 500 layers of width 16 (1,000 tensors, 136k parameters).

Cases, each checked with both strategies (same seeds): the correct models; a 0.1% scale
error in one tensor's gradient; x2 on one element of a 512x128 weight's gradient (the
decoder's first MLP); the decoder with a custom LayerNorm Function (the first block's ln1)
whose backward misses the ``mean(dxhat)`` term of the input gradient. For each: the verdict,
the tensors named as wrong (and whether they are exactly the wrong ones), loss evaluations,
wall time, and that time in AdamW training steps of the same model (the median of 20 warm
steps, same run).

BLAS and intra-op threads are pinned to 1, as in the other benchmarks. Run
``python benchmarks/bench_screen.py`` (about two minutes on 2 cores) or ``--quick`` (one seed,
no deep model: a smoke test). Only stdout is written.
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
    os.environ[_variable] = "1"  # before NumPy and torch load their thread pools

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("", "adapters")]

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import gradguard as gg  # noqa: E402

torch.set_num_threads(1)

STRATEGIES = ["per-tensor", "screen"]  # what run_case compares (--screen-only: the screen)
VOCAB, CONTEXT, D_MODEL, HEADS, BLOCKS, BATCH = 1000, 64, 128, 4, 4, 8


class _BrokenLayerNorm(torch.autograd.Function):
    """LayerNorm whose backward forgets the ``- mean(dxhat)`` term of the input gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
        xhat = (x - mean) * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight + bias

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xhat, rstd, weight = ctx.saved_tensors
        dxhat = dy * weight
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True))  # no - mean(dxhat)
        dims = tuple(range(dy.dim() - 1))
        return dx, (dy * xhat).sum(dims), dy.sum(dims)


class BrokenLayerNorm(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = _BrokenLayerNorm.apply(x, self.weight, self.bias)
        return out


class Block(nn.Module):
    def __init__(self, broken_norm: bool = False) -> None:
        super().__init__()
        self.ln1 = BrokenLayerNorm(D_MODEL) if broken_norm else nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, 4 * D_MODEL)
        self.fc2 = nn.Linear(4 * D_MODEL, D_MODEL)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Decoder(nn.Module):
    def __init__(self, broken_norm: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, D_MODEL)
        self.positions = nn.Parameter(torch.randn(CONTEXT, D_MODEL) * 0.02)
        self.blocks = nn.ModuleList([Block(broken_norm and i == 0) for i in range(BLOCKS)])
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tokens(idx) + self.positions[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.head(self.ln_f(x))
        return out


class Deep(nn.Module):
    """A residual tanh MLP: 500 Linear layers of width 16, 1,000 tensors."""

    def __init__(self, depth: int = 500, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + 0.1 * torch.tanh(layer(x))
        return x


def decoder_problem(broken_norm: bool = False) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    torch.manual_seed(0)
    model = Decoder(broken_norm)
    # Non-trivial LayerNorm affine parameters, as after some training.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
                p.add_(0.1 * torch.randn_like(p))
            elif "ln" in name and name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, VOCAB, (BATCH, CONTEXT + 1))

    def loss(m: nn.Module) -> Tensor:
        logits = m(idx[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))

    return model, loss


def deep_problem() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    torch.manual_seed(0)
    model = Deep()
    x, y = torch.randn(32, 16), torch.randn(32, 16)

    def loss(m: nn.Module) -> Tensor:
        return F.mse_loss(m(x), y)

    return model, loss


def buggy_gradient(
    model: nn.Module, loss: Callable[[nn.Module], Tensor], name: str, bug: str
) -> Callable[[Any], dict[str, Tensor]]:
    """A gradient function: autograd's, with one planted bug in tensor ``name``."""

    def grad(_: Any) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        for p in params.values():
            p.grad = None
        loss(model).backward()
        out = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
        for p in params.values():
            p.grad = None
        if bug == "scale":
            out[name] *= 1.001
        elif bug == "element":
            out[name][3, 5] *= 2.0
        return out

    return grad


def adamw_step_time(model: nn.Module, loss: Callable[[nn.Module], Tensor], steps: int) -> float:
    """Median wall time of one AdamW step (forward, backward, update) of a copy of the model."""
    import copy

    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(twin).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def guard_overhead(steps: int) -> list[str]:
    """A training run of the decoder with and without a Guard (every=100, max_checks=3).

    The same AdamW loop twice (fresh copies, same data); the Guard's checks all fall in the
    first 300 steps, so its cost is a fixed number of seconds: reported as a fraction of this
    run and extrapolated to a 10,000-step run (that run's time from the measured step time).
    """
    import copy

    model, loss = decoder_problem()
    timings = {}
    for guarded in (False, True):
        twin = copy.deepcopy(model)
        opt = torch.optim.AdamW(twin.parameters(), lr=1e-4)
        guard = gg.Guard(loss, twin, every=100, max_checks=3, seed=0) if guarded else None
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss(twin).backward()
            if guard is not None:
                guard.step()
            opt.step()
        timings[guarded] = time.perf_counter() - start
    extra = timings[True] - timings[False]
    per_step = timings[False] / steps
    return [
        f"Guard on the decoder, every=100, max_checks=3, {steps} steps: plain "
        f"{timings[False]:.1f} s, guarded {timings[True]:.1f} s, checks' cost {extra:.2f} s = "
        f"{extra / per_step:.0f} steps = {extra / timings[False]:.2%} of this run; "
        f"extrapolated to 10,000 steps: {extra / (10_000 * per_step):.2%}",
    ]


def run_case(
    label: str,
    model: nn.Module,
    loss: Callable[[nn.Module], Tensor],
    grad: Any,
    wrong: set[str],
    step_s: float,
    seeds: list[int],
) -> list[str]:
    rows = []
    n_tensors = sum(1 for _ in model.parameters())
    for strategy in STRATEGIES:
        evaluations, times, verdicts, named_ok = [], [], [], True
        for seed in seeds:
            start = time.perf_counter()
            report = gg.check(loss, model, grad, seed=seed, strategy=strategy)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
            evaluations.append(report.evaluations)
            verdicts.append(report.status.value)
            if set(report.failed) != wrong:
                named_ok = False
            if os.environ.get("BENCH_SCREEN_VERBOSE"):
                print(label, strategy, report.notes, file=sys.stderr)
                for p in report.params:
                    if p.judged_by != "screen":
                        print(
                            "  ",
                            p.name,
                            p.status,
                            p.judged_by,
                            p.evaluations,
                            p.hint[:80],
                            file=sys.stderr,
                        )
        t = statistics.median(times)
        rows.append(
            f"| {label} | {strategy} | {'/'.join(sorted(set(verdicts)))} | "
            f"{'yes' if named_ok else 'NO'} | {min(evaluations)}-{max(evaluations)} | "
            f"{t:.2f} | {t / step_s:.0f} |"
        )
    del n_tensors
    return rows


def bound(n_tensors: int, size: int) -> int:
    return int(40 + 2 * math.log2(n_tensors) + 4 * math.log2(size))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--guard", type=int, default=0, help="steps of the Guard run (0: none)")
    parser.add_argument("--no-deep", action="store_true", help="skip the 1,000-tensor model")
    parser.add_argument(
        "--screen-only",
        action="store_true",
        help="per-tensor probing only for the correct decoder (the failing cases and the "
        "1,000-tensor model cost minutes per-tensor)",
    )
    args = parser.parse_args()
    if args.screen_only:
        STRATEGIES[:] = ["screen"]
    seeds = [0] if args.quick else list(range(args.seeds))
    lines = [
        "| model, case | strategy | verdict | wrong tensors named exactly | evaluations | "
        "seconds (median) | AdamW steps |",
        "|---|---|---|---|---|---|---|",
    ]
    model, loss = decoder_problem()
    step_s = adamw_step_time(model, loss, 5 if args.quick else 20)
    gg.check(loss, model, seed=0, strategy="screen")  # warm-up
    both = list(STRATEGIES)
    STRATEGIES[:] = ["per-tensor", "screen"]
    lines += run_case("decoder, correct", model, loss, None, set(), step_s, seeds)
    STRATEGIES[:] = both
    scale_name = "blocks.2.proj.weight"
    lines += run_case(
        "decoder, 0.1% scale error",
        model,
        loss,
        buggy_gradient(model, loss, scale_name, "scale"),
        {scale_name},
        step_s,
        seeds,
    )
    element_name = "blocks.1.fc1.weight"
    lines += run_case(
        "decoder, x2 on one element",
        model,
        loss,
        buggy_gradient(model, loss, element_name, "element"),
        {element_name},
        step_s,
        seeds,
    )
    broken, broken_loss = decoder_problem(broken_norm=True)
    # The first block's ln1 input gradient reaches the embeddings only (its output feeds the
    # attention branch; the residual path around it is right).
    upstream = {"tokens.weight", "positions"}
    lines += run_case(
        "decoder, LayerNorm Function missing a term",
        broken,
        broken_loss,
        None,
        upstream,
        step_s,
        seeds,
    )
    if not args.quick and not args.no_deep:
        deep, deep_loss = deep_problem()
        deep_step = adamw_step_time(deep, deep_loss, 20)
        lines += run_case(
            "deep (1,000 tensors), correct", deep, deep_loss, None, set(), deep_step, seeds
        )
        lines += run_case(
            "deep (1,000 tensors), 0.1% scale error",
            deep,
            deep_loss,
            buggy_gradient(deep, deep_loss, "layers.250.weight", "scale"),
            {"layers.250.weight"},
            deep_step,
            seeds,
        )
    print("## Joint screening vs per-tensor probing (PyTorch, float32 in a float64 shadow)\n")
    print(f"torch {torch.__version__}; one AdamW step of the decoder: {step_s * 1e3:.1f} ms\n")
    print(
        f"Failing-case budget 40 + 2 log2(T) + 4 log2(n): decoder 0.1% scale "
        f"(T=54, n=16,384) {bound(54, 16384)}; x2 element (n=65,536) {bound(54, 65536)}\n"
    )
    print("\n".join(lines))
    if args.guard:
        print()
        print("\n".join(guard_overhead(args.guard)))


if __name__ == "__main__":
    main()
