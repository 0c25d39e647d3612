"""A zoo of JAX models with correct and deliberately wrong gradients.

Each case builds fresh params and a loss; ``corrupted`` names the tensors a planted bug makes
wrong (empty for a correct model). The bugs live where JAX users write gradients by hand:
``jax.custom_vjp`` and ``jax.custom_jvp`` rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["Case", "all_cases", "scaled_tanh"]


def scaled_tanh(scale: float) -> Callable[[Any], Any]:
    """tanh with a custom_vjp whose backward multiplies by ``scale`` (1.0: correct)."""

    @jax.custom_vjp
    def f(x: Any) -> Any:
        return jnp.tanh(x)

    def forward(x: Any) -> tuple[Any, Any]:
        y = jnp.tanh(x)
        return y, y

    def backward(y: Any, g: Any) -> tuple[Any]:
        return (g * (1.0 - y**2) * scale,)

    f.defvjp(forward, backward)
    return f


def softplus_jvp(wrong: bool) -> Callable[[Any], Any]:
    """softplus with a custom_jvp; the wrong rule uses the derivative of softplus at 2x."""

    @jax.custom_jvp
    def f(x: Any) -> Any:
        return jnp.logaddexp(x, 0.0)

    @f.defjvp
    def rule(primals: tuple[Any], tangents: tuple[Any]) -> tuple[Any, Any]:
        (x,), (t,) = primals, tangents
        slope = jax.nn.sigmoid(2.0 * x if wrong else x)
        return f(x), slope * t

    return f


@attrs.frozen
class Case:
    """A model, its loss, and the tensors a planted bug corrupts."""

    name: str
    build: Callable[[], tuple[Any, Callable[[Any], Any]]]
    corrupted: tuple[str, ...] = ()


def _data(dtype: Any) -> tuple[Any, Any]:
    kx, ky = jax.random.split(jax.random.key(42))
    return (
        jax.random.normal(kx, (16, 4), dtype),
        jax.random.normal(ky, (16, 1), dtype),
    )


def _pytree_mlp(scale: float, dtype: Any) -> tuple[Any, Callable[[Any], Any]]:
    x, y = _data(dtype)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "hidden": {
            "kernel": jax.random.normal(k1, (4, 8), dtype) * 0.5,
            "bias": jnp.zeros(8, dtype),
        },
        "out": {"kernel": jax.random.normal(k2, (8, 1), dtype) * 0.5, "bias": jnp.zeros(1, dtype)},
    }
    act = scaled_tanh(scale)

    def loss(p: Any) -> Any:
        h = act(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)

    return params, loss


def _jvp_model(wrong: bool) -> tuple[Any, Callable[[Any], Any]]:
    x, y = _data(jnp.float32)
    params = (jax.random.normal(jax.random.key(1), (4, 1)) * 0.5, jnp.full((1,), 0.1))
    act = softplus_jvp(wrong)

    def loss(p: Any) -> Any:
        w, b = p
        return jnp.mean((act(x @ w + b) - y) ** 2)

    return params, loss


class NnxMLP(nnx.Module):
    """Linear, BatchNorm, custom-vjp tanh, Dropout, Linear."""

    def __init__(self, scale: float, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)
        self.act = scaled_tanh(scale)

    def __call__(self, x: Any) -> Any:
        return self.out(self.drop(self.act(self.norm(self.hidden(x)))))


def _nnx(scale: float) -> tuple[Any, Callable[[Any], Any]]:
    x, y = _data(jnp.float32)
    model = NnxMLP(scale, nnx.Rngs(0, dropout=1))
    model.train()  # Dropout on, BatchNorm on batch statistics

    def loss(m: Any) -> Any:
        return jnp.mean((m(x) - y) ** 2)

    return model, loss


class EqxMLP(eqx.Module):
    """An Equinox MLP with a custom-vjp activation and an integer field that is not checked."""

    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    act: Callable[[Any], Any] = eqx.field(static=True)
    steps: Any

    def __init__(self, scale: float, key: Any) -> None:
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(4, 8, key=k1)
        self.out = eqx.nn.Linear(8, 1, key=k2)
        self.act = scaled_tanh(scale)
        self.steps = jnp.array(3)

    def __call__(self, x: Any) -> Any:
        return self.out(self.act(self.hidden(x)))


def _eqx(scale: float) -> tuple[Any, Callable[[Any], Any]]:
    x, y = _data(jnp.float32)
    model = EqxMLP(scale, jax.random.key(3))

    def loss(m: Any) -> Any:
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    return model, loss


_HIDDEN = ("hidden/kernel", "hidden/bias")


def all_cases() -> list[Case]:
    """Every case: each bug and its correct twin."""
    return [
        Case("pytree-float32", lambda: _pytree_mlp(1.0, jnp.float32)),
        Case("pytree-vjp-bug-float32", lambda: _pytree_mlp(1.003, jnp.float32), _HIDDEN),
        Case("jvp-correct", lambda: _jvp_model(False)),
        Case("jvp-bug", lambda: _jvp_model(True), ("0", "1")),
        Case("nnx-dropout-batchnorm", lambda: _nnx(1.0)),
        Case(
            "nnx-vjp-bug",
            lambda: _nnx(1.01),
            # hidden/bias feeds BatchNorm, which cancels its gradient: zero on both sides.
            ("hidden/kernel", "norm/scale", "norm/bias"),
        ),
        Case("equinox", lambda: _eqx(1.0)),
        Case("equinox-vjp-bug", lambda: _eqx(1.01), ("hidden/weight", "hidden/bias")),
    ]
