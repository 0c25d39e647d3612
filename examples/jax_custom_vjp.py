"""A jax.custom_vjp with a subtle backward bug, caught by gradguard.check and a Guard.

The custom_vjp is a GELU written by hand: the forward uses the tanh approximation, the
backward the derivative of the *exact* (erf) GELU. Both are textbook formulas and training
still converges, but the derivative is off by up to 9e-4: a relative error of ~1e-4 in the
gradients, below what float32 finite differences can resolve. gradguard evaluates the
float32 model in a float64 shadow (x64 on for the check's own computations only; the
process's JAX configuration is untouched), so the check sees it and names the tensors it
corrupts: those upstream of the activation.

Then the same check runs in a plain optax training loop through a ``gradguard.Guard``. The
loop makes a new params pytree every step, so it hands the guard the current one
(``guard.params = params``) before ``guard.step()``: on the buggy model the guard stops
training at the first check (``on_failure="stop"``, the default, warns with the table and
sets ``guard.should_stop``); on the fixed one it switches itself off after two passing
checks, and the trained weights are bit-identical to training without a guard.

Run: ``python examples/jax_custom_vjp.py [--log PATH]`` (about ten seconds).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradguard as gg

_C = math.sqrt(2.0 / math.pi)


def make_gelu(exact_backward: bool) -> Any:
    """GELU, tanh approximation, with a hand-written backward."""

    @jax.custom_vjp
    def gelu(x: Any) -> Any:
        return 0.5 * x * (1.0 + jnp.tanh(_C * (x + 0.044715 * x**3)))

    def forward(x: Any) -> tuple[Any, Any]:
        return gelu(x), x

    def backward(x: Any, g: Any) -> tuple[Any]:
        if exact_backward:  # BUG: the derivative of the erf GELU, not of the tanh one
            cdf = 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))
            pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
            return (g * (cdf + x * pdf),)
        t = jnp.tanh(_C * (x + 0.044715 * x**3))
        dt = (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)
        return (g * (0.5 * (1.0 + t) + 0.5 * x * dt),)

    gelu.defvjp(forward, backward)
    return gelu


def init(key: Any) -> dict[str, Any]:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"kernel": jax.random.normal(k1, (10, 32)) * 0.6, "bias": jnp.full(32, 0.5)},
        "out": {"kernel": jax.random.normal(k2, (32, 1)) * 0.2, "bias": jnp.zeros(1)},
    }


def make_loss(gelu: Any, x: Any, y: Any) -> Any:
    def loss(p: Any) -> Any:
        h = gelu(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)

    return loss


def train(buggy: bool, guard_log: str | None, with_guard: bool = True) -> tuple[Any, int]:
    """Train 30 steps of Adam; return the params and how many steps ran."""
    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (256, 10))
    y = jnp.sin(x[:, :1]) + 0.1 * x[:, 1:2]
    gelu = make_gelu(buggy)
    optimizer = optax.adam(1e-2)
    params = init(kp)
    state = optimizer.init(params)
    probe = make_loss(gelu, x[:32], y[:32])  # the guard checks on a fixed probe batch
    loss = make_loss(gelu, x, y)

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    guard = gg.Guard(probe, params, every=10, max_checks=2, log_file=guard_log)
    for i in range(30):
        params, state = step(params, state)
        if with_guard:
            guard.params = params  # the loop's new pytree: the guard checks this one
            guard.step()
            if guard.should_stop:  # on_failure="stop", the default: it warned with the table
                failed = ", ".join(guard.reports[-1].failed)
                print(f"  step {i}: the guard stopped training: gradient check failed on {failed}")
                return params, i + 1
    return params, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=None, help="append the check records to this file")
    args = parser.parse_args()

    kx, kp = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (64, 10))
    y = jnp.sin(x[:, :1])
    params = init(kp)

    print("1. gradguard.check on the buggy custom_vjp (float32 params, float64 shadow):")
    report = gg.check(make_loss(make_gelu(True), x, y), params, seed=0, log_file=args.log)
    print(report)
    print(f"   the user's x64 setting afterwards: {jax.config.read('jax_enable_x64')}")

    print("\n2. The fixed custom_vjp:")
    fixed = gg.check(make_loss(make_gelu(False), x, y), params, seed=0, log_file=args.log)
    print("  ", str(fixed).splitlines()[0])

    print("\n3. A Guard in a plain optax loop, buggy model:")
    _, steps = train(True, args.log)
    print(f"   trained {steps} of 30 steps")

    print("\n4. The same loop with the fixed model:")
    guarded, steps = train(False, args.log)
    plain, _ = train(False, None, with_guard=False)
    same = all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes()
        for a, b in zip(
            jax.tree_util.tree_leaves(guarded), jax.tree_util.tree_leaves(plain), strict=True
        )
    )
    print(f"   trained {steps} of 30 steps; bit-identical to training without a guard: {same}")


if __name__ == "__main__":
    main()
