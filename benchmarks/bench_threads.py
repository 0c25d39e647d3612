"""Benchmark of a check in the environment a user has: default thread pools, no variables set.

Sections:

1. **Thread settings.** The default check of the 784-64-10 tanh MLP (float64, batch 16) and
   ``torch.autograd.gradcheck(fast_mode=True)`` on the same function, each setting in its own
   child process so that the environment variable takes effect before NumPy loads:
   no variable set and torch at its default threads, with NumPy's BLAS pinned during the check
   (gradguard now) and without the pin (gradguard before, the pin switched off in the child);
   and ``OPENBLAS_NUM_THREADS=1``. Medians of interleaved, warm repetitions.
2. **Per-evaluation cost on 1,000 tensors.** A float32 model of 250 residual blocks
   (LayerNorm, Linear 32x32, tanh): 1,000 tensors, 264,000 parameters. One shadow evaluation
   inside the check (a tensor perturbed, evaluated, reset), with the full precision machinery
   (a pre-hook on every module and the Float64Mode) and lean (input casts that lift only),
   against a warm forward of the float64 copy and of the float32 model, same process.
3. **The limiter's own cost**: pinning and unpinning NumPy's BLAS, per check.

Run ``python benchmarks/bench_threads.py`` (about a minute on 2 cores) or ``--quick``. Only
ratios are meaningful across machines; no test asserts a timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _child_mlp(reps: int, pin: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from _common import median, timed
    from torch import nn
    from torch.autograd import gradcheck
    from torch.func import functional_call

    import gradguard as gg
    from gradguard.kit import threads

    if not pin:
        threads._libraries = []  # the library as it was: nothing pinned
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10)).double()
    x = torch.randn(16, 784, dtype=torch.float64)
    y = torch.randn(16, 10, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]

    def loss(m: nn.Module) -> torch.Tensor:
        return F.mse_loss(m(x), y)

    def function(*tensors: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(model, dict(zip(names, tensors, strict=True)), (x,)), y)

    def peer() -> bool:
        inputs = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        return bool(gradcheck(function, inputs, fast_mode=True))

    peer()
    gg.check(loss, model, seed=0)
    ours, theirs = [], []
    evaluations = 0
    for rep in range(reps):
        t, report = timed(lambda r=rep: gg.check(loss, model, seed=r))
        ours.append(t)
        evaluations = report.evaluations + report.gradient_calls
        assert report.passed
        t, ok = timed(peer)
        theirs.append(t)
        assert ok
    return {
        "check": median(ours),
        "gradcheck": median(theirs),
        "calls": evaluations,
        "torch_threads": torch.get_num_threads(),
        "blas": [lib.get_num_threads() for lib in threads.numpy_blas_libraries()],
    }


def _child_many(reps: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from _common import median
    from torch import nn

    from gradguard_torch._adapter import TorchView

    class Residual(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.linear = nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.tanh(self.linear(self.norm(x)))

    torch.manual_seed(0)
    model = nn.Sequential(*[Residual(32) for _ in range(250)])
    x, y = torch.randn(8, 32), torch.randn(8, 32)
    double = copy.deepcopy(model).double()
    x64, y64 = x.double(), y.double()

    def loss(m: nn.Module) -> torch.Tensor:
        return F.mse_loss(m(x), y)

    def warm(function: Any) -> float:
        function()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return median(times)

    def views() -> dict[str, Any]:
        lean = TorchView(model, loss, None)
        full = TorchView(model, loss, None)
        full._lean_tried = True  # the machinery as it was: every module hooked, the mode on
        return {"lean": lean, "full": full}

    results: dict[str, list[float]] = {"float32": [], "float64": [], "lean": [], "full": []}
    opened = views()
    for view in opened.values():
        view.__enter__()
        view.evaluate()
        view.evaluate()
    try:
        probes = {name: (lambda v=view: _probe(v, 5)) for name, view in opened.items()}
        with torch.no_grad():
            for _ in range(3):  # interleaved rounds
                results["float32"].append(warm(lambda: loss(model).item()))
                results["float64"].append(warm(lambda: F.mse_loss(double(x64), y64).item()))
                for name, probe in probes.items():
                    results[name].append(warm(probe))
        lean_on = opened["lean"]._lean
    finally:
        for view in opened.values():
            view.__exit__(None, None, None)
    return {
        "tensors": len(list(model.parameters())),
        "parameters": sum(p.numel() for p in model.parameters()),
        **{name: min(values) for name, values in results.items()},
        "lean_on": lean_on,
    }


def _probe(view: Any, segment: int) -> float:
    """One direction probe's evaluation: write the whole tensor, evaluate, reset."""
    view.write(segment, None, view.original(segment) * 1.001)
    value = float(view.evaluate())
    view.reset(segment, None)
    return value


def _child_limiter() -> dict[str, Any]:
    import torch  # noqa: F401  # the libraries a torch user has loaded

    from gradguard.kit.threads import NumpyBlasPinned, numpy_blas_libraries

    start = time.perf_counter()
    libraries = numpy_blas_libraries()
    found = time.perf_counter() - start
    number = 2000
    start = time.perf_counter()
    for _ in range(number):
        with NumpyBlasPinned():
            pass
    per = (time.perf_counter() - start) / number
    return {"find_ms": found * 1e3, "pin_us": per * 1e6, "libraries": len(libraries)}


def _run_child(name: str, reps: int, env: dict[str, str]) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    environment.update(env)
    paths = [str(ROOT), str(ROOT / "adapters"), str(ROOT / "benchmarks")]
    environment["PYTHONPATH"] = os.pathsep.join([*paths, environment.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, "--reps", str(reps)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        children = {
            "pinned": lambda: _child_mlp(args.reps, pin=True),
            "unpinned": lambda: _child_mlp(args.reps, pin=False),
            "many": lambda: _child_many(args.reps),
            "limiter": _child_limiter,
        }
        print(json.dumps(children[args.child]()))
        return
    reps = 3 if args.quick else 7
    settings = [
        ("no variable set, NumPy's BLAS pinned during the check (now)", "pinned", {}),
        ("no variable set, no pin (before)", "unpinned", {}),
        ("OPENBLAS_NUM_THREADS=1", "pinned", {"OPENBLAS_NUM_THREADS": "1"}),
    ]
    print("## 1. Thread settings: default check vs gradcheck(fast_mode=True), 784-64-10 MLP")
    print()
    print(
        "| setting | torch threads | NumPy BLAS threads after | calls | check (ms) "
        "| gradcheck fast (ms) | check / gradcheck fast |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, child, env in settings:
        r = _run_child(child, reps, env)
        print(
            f"| {label} | {r['torch_threads']} | {','.join(map(str, r['blas']))} | {r['calls']} "
            f"| {r['check'] * 1e3:,.1f} | {r['gradcheck'] * 1e3:,.1f} "
            f"| **{r['check'] / r['gradcheck']:.2f}** |"
        )
    print()
    r = _run_child("many", max(reps, 5), {})
    print(
        f"## 2. One evaluation inside the check, {r['tensors']:,} tensors "
        f"({r['parameters']:,} parameters, float32, float64 shadow)"
    )
    print()
    print("| evaluation | time (ms) | / float64 forward | / float32 forward |")
    print("|---|---:|---:|---:|")
    rows = [
        ("warm forward, float32 model", "float32"),
        ("warm forward, float64 copy", "float64"),
        ("in the check, full machinery (before)", "full"),
        ("in the check, lean (now)", "lean"),
    ]
    for label, key in rows:
        print(
            f"| {label} | {r[key] * 1e3:,.2f} | **{r[key] / r['float64']:.2f}** "
            f"| {r[key] / r['float32']:.2f} |"
        )
    print(f"\nLean path taken: {'yes' if r['lean_on'] else 'NO'}.\n")
    r = _run_child("limiter", 1, {})
    print("## 3. The limiter's own cost (torch imported)")
    print()
    print(
        f"Finding NumPy's BLAS (once per process): {r['find_ms']:.1f} ms; "
        f"pinning and unpinning, per check: {r['pin_us']:.1f} us "
        f"({r['libraries']} library)."
    )


if __name__ == "__main__":
    main()
