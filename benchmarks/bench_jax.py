"""The JAX adapter: per-evaluation overhead, and gradguard next to jax.test_util.check_grads.

1. Each loss evaluation of a check is one call of the loss compiled with ``jax.jit``, the
   perturbed tensor passed as an argument. Its cost is compared with a jitted forward of the
   same loss (the floor), per evaluation, for a coordinate probe and a direction probe.
2. The same losses through ``jax.test_util.check_grads`` (JAX's own checker) and through
   ``gradguard.check``: verdict, wall time, and what each says about where the error is.

Run: ``python benchmarks/bench_jax.py [--quick]``. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import median, ms

import gradguard as gg
from gradguard_jax import JaxAdapter, JaxParams

_C = math.sqrt(2.0 / math.pi)


def mlp(width: int, key: Any) -> tuple[dict[str, Any], Any]:
    """A 2-hidden-layer tanh MLP on a 256-row batch, float32."""
    ks = jax.random.split(key, 4)
    x = jax.random.normal(ks[0], (256, 32))
    y = jax.random.normal(ks[1], (256, 1))
    params = {
        "l1": {"kernel": jax.random.normal(ks[2], (32, width)) / 6, "bias": jnp.zeros(width)},
        "l2": {"kernel": jax.random.normal(ks[3], (width, 1)) / 6, "bias": jnp.zeros(1)},
    }

    def loss(p: Any) -> Any:
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] + p["l2"]["bias"] - y) ** 2)

    return params, loss


def overhead(quick: bool) -> list[str]:
    lines = [
        "## 1. Per-evaluation cost vs a jitted forward",
        "",
        "The perturbed tensor is the largest (the first layer's kernel), passed whole.",
        "",
        "| hidden width | parameters | jitted forward (ms) | coordinate probe evaluation (ms) "
        "| ratio | direction probe evaluation (ms) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    repeat = 30 if quick else 200
    for width in (64, 1024) if quick else (64, 1024, 4096):
        params, loss = mlp(width, jax.random.key(width))
        forward = jax.jit(loss)
        forward(params).block_until_ready()
        floor: list[float] = []
        coordinate: list[float] = []
        direction: list[float] = []
        # The same precision as the forward (native), so the ratio is the adapter's own cost;
        # the three are interleaved, so the machine's load weighs on each alike.
        with JaxAdapter().open(JaxParams(params, precision="native"), loss, None) as view:
            view.evaluate()
            segment = max(range(len(view.layout)), key=lambda s: view.layout[s].size)
            size = view.layout[segment].size
            moved = view.original(segment) * 1.001
            for i in range(repeat):
                start = time.perf_counter()
                forward(params).block_until_ready()
                floor.append(time.perf_counter() - start)
                view.write_element(segment, i % size, 0.5)
                start = time.perf_counter()
                view.evaluate()
                coordinate.append(time.perf_counter() - start)
                view.reset_element(segment, i % size)
                view.write(segment, None, moved)
                start = time.perf_counter()
                view.evaluate()
                direction.append(time.perf_counter() - start)
                view.reset(segment, None)
        n = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))
        f, c, d = median(floor), median(coordinate), median(direction)
        lines.append(
            f"| {width} | {n:,} | {ms(f)} | {ms(c)} | {c / f:.2f} | {ms(d)} | {d / f:.2f} |"
        )
    return lines


def buggy_gelu() -> Any:
    """The GELU of examples/jax_custom_vjp.py: tanh forward, erf-GELU backward (a bug)."""

    @jax.custom_vjp
    def gelu(x: Any) -> Any:
        return 0.5 * x * (1.0 + jnp.tanh(_C * (x + 0.044715 * x**3)))

    def backward(x: Any, g: Any) -> tuple[Any]:
        cdf = 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))
        pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return (g * (cdf + x * pdf),)

    gelu.defvjp(lambda x: (gelu(x), x), backward)
    return gelu


def peers() -> list[str]:
    key = jax.random.key(0)
    x = jax.random.normal(key, (64, 10))
    y = jnp.sin(x[:, :1])
    gelu = buggy_gelu()
    kw, kb = jax.random.split(jax.random.key(1))
    gelu_params = {
        "hidden": {"kernel": jax.random.normal(kw, (10, 32)) * 0.6, "bias": jnp.full(32, 0.5)},
        "out": {"kernel": jax.random.normal(kb, (32, 1)) * 0.2, "bias": jnp.zeros(1)},
    }

    def gelu_loss(p: Any) -> Any:
        h = gelu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)

    mlp_params, mlp_loss = mlp(64, jax.random.key(2))
    cases: list[tuple[str, Any, Any, bool]] = [
        (
            "sum(tanh(x)**2), x = ones(3) (correct)",
            lambda v: jnp.sum(jnp.tanh(v) ** 2),
            jnp.ones(3),
            True,
        ),
        ("tanh MLP, 2,177 params (correct)", mlp_loss, mlp_params, True),
        ("GELU custom_vjp, erf backward (1e-4 bug)", gelu_loss, gelu_params, False),
    ]
    lines = [
        "## 2. Against jax.test_util.check_grads (float32 params, same losses, one run)",
        "",
        "| loss | correct? | checker | verdict | time (ms) | says where |",
        "|---|---|---|---|---|---|",
    ]
    for name, loss, params, correct in cases:
        for label, order in (("check_grads order=1", 1), ("check_grads order=2", 2)):
            start = time.perf_counter()
            try:
                check_grads(loss, (params,), order=order, modes=("rev",))
                verdict = "pass"
            except AssertionError:
                verdict = "FAIL"
            elapsed = time.perf_counter() - start
            lines.append(
                f"| {name} | {'yes' if correct else 'no'} | {label} | {verdict} | {ms(elapsed)} "
                "| no: one number for all params |"
            )
        start = time.perf_counter()
        report = gg.check(loss, params, seed=0)
        elapsed = time.perf_counter() - start
        where = ", ".join(report.failed) if report.failed else "-"
        lines.append(
            f"| {name} | {'yes' if correct else 'no'} | gradguard.check | "
            f"{'pass' if report.passed else 'FAIL'} ({report.evaluations} evaluations, "
            f"{report.dtype}) | {ms(elapsed)} | {where} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = parser.parse_args()
    print(f"# JAX adapter benchmark (jax {jax.__version__}, {jax.devices()[0].platform})\n")
    print("\n".join(overhead(args.quick)))
    print()
    print("\n".join(peers()))
    print(f"\njax_enable_x64 after every check: {jax.config.read('jax_enable_x64')}")


if __name__ == "__main__":
    main()
