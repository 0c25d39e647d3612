"""gradguard_torch.gradcheck on PyTorch's own operator database, beside torch's gradcheck.

Run: ``python benchmarks/bench_opinfo.py [--quick] [--samples 2] [--max-numel 512]``.

1. *Correct operators.* Every OpInfo in ``op_db`` that supports autograd and float32 backward
   on CPU, with its float32 samples (at most ``--samples`` per op, inputs of at most
   ``--max-numel`` elements), built as torch's own ``test_fn_grad`` builds them. Skipped, and
   counted with the reason: ops without autograd or float32 backward, ops whose OpInfo skips or
   expects ``test_fn_grad`` to fail on CPU, complex inputs or outputs, samples over the size
   bound. Each sample is checked by gradguard in float32 and by torch's gradcheck in float32
   and float64 (slow and fast mode). A *false alarm* is a failure where torch's float64 slow
   gradcheck passes; a sample that torch's float64 gradcheck also fails (a non-differentiable
   point of the sample, e.g. a tie in max) is listed, not counted.
2. *Planted bugs.* Custom Functions wrapping stock ops with a corrupted backward (a factor, a
   sign, a missing term, one wrong element, a backward that assumes contiguous grads, a wrong
   double backward): each must be caught in float32 and localized to the wrong inputs.
"""

from __future__ import annotations

import argparse
import collections
import math
import time
import warnings
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from gradguard_torch import OperatorCheckError, gradcheck, gradgradcheck

QUICK_OPS = (
    "mul", "matmul", "tanh", "softmax", "cumsum", "nn.functional.layer_norm", "logsumexp",
    "atan2",
)  # fmt: skip


def _skipped_for_grad(op: Any) -> str:
    """Why the OpInfo itself keeps ``test_fn_grad`` from running on CPU, or ''."""
    for d in op.decorators:
        if getattr(d, "test_name", None) != "test_fn_grad":
            continue
        if d.device_type not in (None, "cpu"):
            continue
        if d.dtypes is not None and torch.float64 not in d.dtypes:
            continue
        return "OpInfo skips or expects test_fn_grad to fail"
    return ""


def _samples(op: Any, dtype: torch.dtype, limit: int, max_numel: int) -> tuple[list[Any], str]:
    out, why = [], ""
    for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
        if len(out) >= limit:
            break
        inputs = sample.input if isinstance(sample.input, list | tuple) else [sample.input]
        tensors = [
            x
            for x in chain(inputs, sample.args, sample.kwargs.values())
            if isinstance(x, torch.Tensor)
        ]
        if any(t.is_complex() for t in tensors):
            why = "complex inputs"
            continue
        if sum(t.numel() for t in tensors if t.requires_grad) > max_numel:
            why = f"inputs over {max_numel} elements"
            continue
        if not any(t.requires_grad for t in tensors):
            why = "no input requires grad"
            continue
        out.append(sample)
    return out, why


def _function(op: Any, sample: Any) -> tuple[Callable[..., Any], tuple[torch.Tensor, ...]]:
    """torch's ``_check_helper`` recomposition: ``fn(*tensors requiring grad)``.

    Tensors of the sample that do not require grad follow the dtype of the first argument, so
    a float64 twin (or torch's float64 run) evaluates the whole op in float64.
    """
    is_list = isinstance(sample.input, list | tuple)
    inputs = list(sample.input) if is_list else [sample.input]
    flat = [*inputs, *sample.args, *sample.kwargs.values()]
    slots = [i for i, x in enumerate(flat) if isinstance(x, torch.Tensor) and x.requires_grad]
    args = tuple(flat[i] for i in slots)
    n_in, n_args = len(inputs), len(sample.args)
    keys = list(sample.kwargs)
    variant = op.get_op()

    def fn(*given: torch.Tensor) -> Any:
        dtype = given[0].dtype
        values = list(flat)
        for i, x in enumerate(values):
            if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad:
                values[i] = x.to(dtype)
        for slot, x in zip(slots, given, strict=True):
            values[slot] = x
        first = values[:n_in] if is_list else values[0]
        positional = values[n_in : n_in + n_args]
        kwargs = dict(zip(keys, values[n_in + n_args :], strict=True))
        output = op.gradcheck_wrapper(variant, first, *positional, **kwargs)
        if sample.output_process_fn_grad is not None:
            output = sample.output_process_fn_grad(output)
        return output

    return fn, args


def _cast(args: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return tuple(a.detach().to(dtype).requires_grad_(True) for a in args)


def _run(check: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, float, str]:
    """Whether ``check(*args, **kwargs)`` passed, its wall time, and the error's first line."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = bool(check(*args, **kwargs))
        # gradguard's drop-in accepts a float32 backward that only loses precision against
        # its own exact float64 backward, with a warning: counted apart.
        lost = [str(w.message) for w in caught if "loses precision" in str(w.message)]
        message = f"accepted: {lost[0][:160]}" if lost else ""
    except (GradcheckError, AssertionError, RuntimeError, ValueError, TypeError) as exc:
        ok, message = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return ok, time.perf_counter() - start, message


def opinfo(args: argparse.Namespace) -> None:
    """Section 1: correct operators."""
    import expecttest  # noqa: F401  # common_methods_invocations needs it; say so early
    from torch.testing._internal.common_methods_invocations import op_db

    skipped: collections.Counter[str] = collections.Counter()
    rows = []
    ops = [op for op in op_db if not args.quick or op.name in QUICK_OPS][args.first :]
    started = time.perf_counter()
    for op in ops:
        if time.perf_counter() - started > args.budget:
            skipped["time budget reached"] += 1
            continue
        if not op.supports_autograd:
            skipped["no autograd"] += 1
            continue
        if torch.float32 not in op.supported_backward_dtypes("cpu"):
            skipped["no float32 backward on CPU"] += 1
            continue
        why = _skipped_for_grad(op)
        if why:
            skipped[why] += 1
            continue
        try:
            samples, why = _samples(op, torch.float32, args.samples, args.max_numel)
        except Exception as exc:  # a sample generator that fails on this build
            skipped[f"sample_inputs raised {type(exc).__name__}"] += 1
            continue
        if not samples:
            skipped[why or "no samples"] += 1
            continue
        for sample in samples:
            fn, xs = _function(op, sample)
            tol = op.gradcheck_nondet_tol
            ours = _run(gradcheck, fn, xs, nondet_tol=tol)
            x64 = _cast(xs, torch.float64)
            slow = _run(torch.autograd.gradcheck, fn, x64, nondet_tol=tol)
            if args.quick or args.reference_only:  # the reference only
                t32 = fast = (True, 0.0, "")
            else:
                t32 = _run(torch.autograd.gradcheck, fn, xs, nondet_tol=tol)
                fast = _run(torch.autograd.gradcheck, fn, x64, nondet_tol=tol, fast_mode=True)
            rows.append((op.name, ours, t32, slow, fast))
    _opinfo_table(rows, skipped, len(ops), args.quick or args.reference_only)


def _opinfo_table(
    rows: list[Any], skipped: collections.Counter[str], n_ops: int, reference_only: bool
) -> None:
    n = len(rows)
    checked_ops = len({r[0] for r in rows})
    false_alarms = [r for r in rows if not r[1][0] and r[3][0]]
    both = [r for r in rows if not r[1][0] and not r[3][0]]
    torch32 = [r for r in rows if not r[2][0] and r[3][0]]
    slow64 = [r for r in rows if not r[3][0]]
    ratio_slow = [r[1][1] / r[3][1] for r in rows if r[3][1] > 0]
    ratio_fast = [r[1][1] / r[4][1] for r in rows if r[4][1] > 0]
    print("## 1. Correct operators: PyTorch's OpInfo database, float32 samples (CPU)\n")
    print(f"OpInfos: {n_ops}; checked: {n} samples of {checked_ops} distinct op names\n")
    print("| check | dtype | samples failed | false alarms (float64 slow passes) |")
    print("|---|---|---|---|")
    print(f"| gradguard_torch.gradcheck | float32 | {n - sum(r[1][0] for r in rows)} "
          f"| {len(false_alarms)} |")  # fmt: skip
    if not reference_only:
        print(f"| torch.autograd.gradcheck | float32 | {n - sum(r[2][0] for r in rows)} "
              f"| {len(torch32)} |")  # fmt: skip
    print(f"| torch.autograd.gradcheck | float64 slow | {len(slow64)} | (reference) |")
    if not reference_only:
        print(f"| torch.autograd.gradcheck | float64 fast | {n - sum(r[4][0] for r in rows)} | |")
    accepted = [r for r in rows if r[1][0] and r[1][2].startswith("accepted")]
    print(f"\nPassed with a precision warning (float32 backward vs its exact float64 one): "
          f"{len(accepted)}")  # fmt: skip
    for r in accepted:
        print(f"- {r[0]}: {r[1][2]}")
    print()
    total = [sum(r[k][1] for r in rows) for k in (1, 2, 3, 4)]
    print("| time | gradguard f32 | torch f32 | torch f64 slow | torch f64 fast |")
    print("|---|---|---|---|---|")
    shown = [
        "not run" if reference_only and k in (2, 4) else f"{t:.1f}"
        for k, t in zip((1, 2, 3, 4), total, strict=True)
    ]
    print("| total s | " + " | ".join(shown) + " |")
    if ratio_slow:
        print(
            f"| median ratio gradguard / torch per sample | | | "
            f"{_median(ratio_slow):.2f} | "
            f"{'not run' if reference_only else f'{_median(ratio_fast):.2f}'} |"
        )
    print(f"\nFalse alarms: {len(false_alarms)}")
    for r in false_alarms:
        print(f"- {r[0]}: {r[1][2]}")
    print(f"\nFailed by gradguard and by torch float64 (not counted): {len(both)}")
    for r in both:
        print(f"- {r[0]}: torch: {r[3][2]}")
    print("\nSkipped:")
    for why, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        print(f"- {why}: {count}")
    print()


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else math.nan


# ---------------------------------------------------------------------------------------------
# Section 2: planted bugs


def _function_class(
    name: str, forward: Callable[..., torch.Tensor], backward: Callable[..., Any]
) -> Any:
    def fwd(ctx: Any, *xs: torch.Tensor) -> torch.Tensor:
        y = forward(*xs)
        ctx.save_for_backward(*xs, y)
        return y

    def bwd(ctx: Any, g: torch.Tensor) -> Any:
        *xs, y = ctx.saved_tensors
        return backward(g, y, *xs)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd),
                                                   "backward": staticmethod(bwd)})  # fmt: skip


def _as_contiguous(g: torch.Tensor) -> torch.Tensor:
    """Reads grad_output's memory as if it were contiguous: the Triton bug (pytorch#194719)."""
    strides, step = [], 1
    for size in reversed(g.shape):
        strides.insert(0, step)
        step *= size
    return torch.as_strided(g, g.shape, strides, g.storage_offset())


def _one_wrong(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] *= 1.5
    return t


# (name, forward, backward(g, y, *xs), input shapes, failing inputs, order)
BUGS: list[tuple[str, Any, Any, tuple[tuple[int, ...], ...], set[int], int]] = [
    ("mul: grad b x1.01", torch.mul, lambda g, y, a, b: (g * b, 1.01 * g * a),
     ((4, 5), (4, 5)), {1}, 1),
    ("mul: sign of grad a", torch.mul, lambda g, y, a, b: (-g * b, g * a),
     ((4, 5), (4, 5)), {0}, 1),
    ("mul: grads swapped", torch.mul, lambda g, y, a, b: (g * a, g * b),
     ((4, 5), (4, 5)), {0, 1}, 1),
    ("matmul: grad a not transposed", torch.matmul, lambda g, y, a, b: (g @ b, a.t() @ g),
     ((4, 4), (4, 4)), {0}, 1),
    ("sin: extra term", torch.sin, lambda g, y, x: g * (x.cos() + 1e-3), ((6,),), {0}, 1),
    ("exp: one element wrong", torch.exp, lambda g, y, x: _one_wrong(g * y), ((3, 4),), {0}, 1),
    ("tanh: 1-y not 1-y^2", torch.tanh, lambda g, y, x: g * (1 - y), ((6,),), {0}, 1),
    ("sigmoid: y(1+y)", torch.sigmoid, lambda g, y, x: g * y * (1 + y), ((6,),), {0}, 1),
    ("div: grad b missing a square", torch.div, lambda g, y, a, b: (g / b, -g * a / b),
     ((5,), (5,)), {1}, 1),
    ("pow3: 3x not 3x^2", lambda x: x**3, lambda g, y, x: 3 * g * x, ((6,),), {0}, 1),
    ("mean: missing 1/n", lambda x: x.mean(0), lambda g, y, x: g.expand(x.shape).clone(),
     ((4, 3),), {0}, 1),
    ("softmax: missing y in the sum", lambda x: x.softmax(-1),
     lambda g, y, x: y * (g - g.sum(-1, keepdim=True)), ((3, 4),), {0}, 1),
    ("broadcast add: grad b from row 0", torch.add, lambda g, y, a, b: (g, g[0]),
     ((4, 3), (3,)), {1}, 1),
    ("linear bias: mean not sum", lambda x, w, b: x @ w.t() + b,
     lambda g, y, x, w, b: (g @ w, g.t() @ x, g.mean(0)), ((4, 3), (2, 3), (2,)), {2}, 1),
    ("center: missing mean term", lambda x: x - x.mean(-1, keepdim=True),
     lambda g, y, x: g, ((3, 5),), {0}, 1),
    ("relu: wrong threshold", torch.relu, lambda g, y, x: g * (x > -0.5), ((8,),), {0}, 1),
    ("cumsum: not reversed", lambda x: x.cumsum(0), lambda g, y, x: g, ((6,),), {0}, 1),
    ("matmul: assumes contiguous grad", torch.matmul,
     lambda g, y, a, b: (_as_contiguous(g) @ b.t(), a.t() @ _as_contiguous(g)),
     ((4, 5), (5, 3)), {0, 1}, 1),
    ("mul: assumes contiguous grad", torch.mul,
     lambda g, y, a, b: (_as_contiguous(g) * b, _as_contiguous(g) * a), ((4, 5), (4, 5)),
     {0, 1}, 1),
    ("row sum: assumes contiguous grad", lambda x: x.sum(-1),
     lambda g, y, x: _as_contiguous(g).unsqueeze(-1).expand(x.shape).clone(), ((4, 3, 2),),
     {0}, 1),
    ("square: double backward 2x (saved y / detached x)", lambda x: x * x,
     lambda g, y, x: 2 * g * (y / x.detach()), ((6,),), {0}, 2),
    ("sin: double backward drops d/dx", torch.sin, lambda g, y, x: g * x.detach().cos(),
     ((6,),), {0}, 2),
    ("exp: double backward from detached y", torch.exp, lambda g, y, x: g * y.detach(),
     ((6,),), {0}, 2),
    ("mul: double backward drops d/db", torch.mul,
     lambda g, y, a, b: (g * b.detach(), g * a), ((5,), (5,)), {1}, 2),
]  # fmt: skip


def planted(args: argparse.Namespace) -> None:
    """Section 2: every planted bug caught in float32 and localized to its inputs."""
    print("## 2. Planted bugs (custom Functions with a corrupted backward), float32\n")
    print("| bug | wrong inputs | gradguard f32 | localized | torch f32 | torch f64 |")
    print("|---|---|---|---|---|---|")
    caught = localized = torch_caught = 0
    for k, (name, forward, backward, shapes, wrong, order) in enumerate(BUGS):
        function = _function_class(f"Bug{k}", forward, backward)
        g = torch.Generator().manual_seed(k)
        xs = tuple(
            (torch.rand(s, generator=g) + 0.5 if "div" in name or "square" in name
             else torch.randn(s, generator=g)).requires_grad_(True)
            for s in shapes
        )  # fmt: skip
        check = gradcheck if order == 1 else gradgradcheck
        torch_check = torch.autograd.gradcheck if order == 1 else torch.autograd.gradgradcheck
        found: set[int] = set()
        try:
            check(function.apply, xs)
            ours = "missed"
        except OperatorCheckError as exc:
            ours = "caught"
            found = {int(n.split()[1]) for n in exc.report.failed}
        hit = ours == "caught"
        right = hit and found == wrong
        if args.quick:  # the test suite's run: gradguard only
            t32 = t64 = True
        else:
            t32 = _run(torch_check, function.apply, xs)[0]
            t64 = _run(torch_check, function.apply, _cast(xs, torch.float64))[0]
        caught += hit
        localized += right
        torch_caught += not t64
        where = ", ".join(f"input {i}" for i in sorted(wrong))
        print(
            f"| {name} | {where} | {ours} | {'yes' if right else f'no: {sorted(found)}'} "
            f"| {'passed' if t32 else 'caught'} | {'passed' if t64 else 'caught'} |"
        )
    n = len(BUGS)
    print(f"\nPlanted bugs caught: {caught} of {n}; localized to the wrong inputs: {localized} "
          f"of {n}; torch float64 caught: "
          f"{'not run (--quick)' if args.quick else f'{torch_caught} of {n}'}\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="8 ops, gradguard and torch float64 only (tests)"
    )
    parser.add_argument("--samples", type=int, default=2, help="samples per op")
    parser.add_argument("--max-numel", type=int, default=512, help="largest input checked")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds for section 1")
    parser.add_argument("--bugs-only", action="store_true")
    parser.add_argument("--first", type=int, default=0, help="start at this OpInfo of op_db")
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="beside gradguard, only torch's float64 slow gradcheck (the false-alarm reference)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not args.bugs_only:
        opinfo(args)
    planted(args)


if __name__ == "__main__":
    main()
