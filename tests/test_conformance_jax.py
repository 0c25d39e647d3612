"""The JAX adapter through the conformance suite (gradguard.testing): a float32 pytree
(evaluated in a float64 shadow, gradient by jax.grad) and a Flax NNX module (its nnx.Param
state checked, its RNG streams and batch statistics left as they were)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import gradguard as gg
from gradguard.testing import AdapterConformance, ConformanceCase

X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)


# -- a pytree of float32 arrays --------------------------------------------------------------


def _params() -> dict[str, Any]:
    rng = np.random.default_rng(4)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=2), jnp.float32),
    }


def _loss(p: dict[str, Any]) -> Any:
    return jnp.mean((jnp.tanh(X @ p["w"] + p["b"]) - Y) ** 2)


def _grad(p: dict[str, Any]) -> dict[str, Any]:
    return dict(jax.grad(_loss)(p))


def _with_b(p: dict[str, Any], b: Any) -> dict[str, Any]:
    return {**_grad(p), "b": b}


class TestPytreeConformance(AdapterConformance):
    case = ConformanceCase(
        adapter="jax",
        make=_params,
        loss=_loss,
        grad=None,
        wrong_grad=lambda p: _with_b(p, 2 * _grad(p)["b"]),
        wrong_tensor="b",
        snapshot=lambda p: [np.array(p["w"]), np.array(p["b"])],
        vector_loss=lambda p: X @ p["w"],
        misshapen_grad=lambda p: _with_b(p, jnp.zeros(5)),
        nan_grad=lambda p: _with_b(p, jnp.full(2, jnp.nan)),
        shared=None,  # JAX arrays are values: see the test that replaces the suite's below
    )

    def test_one_tensor_given_twice_is_refused(self) -> None:
        """JAX arrays are immutable values, not shared memory: one array in two places is
        two leaves, each perturbed on its own and each checked (the suite's refusal is for
        frameworks that write into their tensors)."""
        w = jnp.arange(3.0, dtype=jnp.float32)
        report = gg.check(lambda p: jnp.sum(jnp.sin(p[0]) * jnp.cos(2 * p[1])), [w, w], seed=0)
        assert report.passed, str(report)
        assert [t.name for t in report.params] == ["0", "1"]
        assert np.array(w).tolist() == [0.0, 1.0, 2.0]


# -- a Flax NNX module -----------------------------------------------------------------------


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.h = nnx.Linear(3, 4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)
        self.rngs = rngs

    def __call__(self, x: Any) -> Any:
        return self.out(jnp.tanh(self.h(x)))


def _module() -> _Tiny:
    return _Tiny(nnx.Rngs(0))


def _module_loss(m: _Tiny) -> Any:
    return jnp.mean((m(X) - Y) ** 2)


def _module_grad(m: _Tiny) -> Any:
    return nnx.grad(_module_loss)(m)


def _replaced(m: _Tiny, bias: Any) -> Any:
    grads = _module_grad(m)
    grads["out"]["bias"] = nnx.Param(bias)  # an nnx.State mirrors the module
    return grads


def _state(m: _Tiny) -> list[Any]:
    """Every leaf of the module's state, RNG keys and counts included, as NumPy arrays."""
    leaves = jax.tree_util.tree_leaves(nnx.state(m))
    return [
        np.array(
            jax.random.key_data(leaf)
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            else leaf
        )
        for leaf in leaves
    ]


class TestNnxConformance(AdapterConformance):
    case = ConformanceCase(
        adapter="jax",
        make=_module,
        loss=_module_loss,
        grad=None,
        wrong_grad=lambda m: _replaced(m, 2 * _module_grad(m)["out"]["bias"][...]),
        wrong_tensor="out/bias",
        snapshot=_state,
        vector_loss=lambda m: m(X),
        misshapen_grad=lambda m: _replaced(m, jnp.zeros(5)),
        nan_grad=lambda m: _replaced(m, jnp.full(2, jnp.nan)),
        shared=None,
    )

    def test_one_tensor_given_twice_is_refused(self) -> None:
        """An NNX module holds each Variable once: a layer called twice in the loss is one
        set of tensors, checked once, and its gradient is the sum over both calls."""
        m = _module()

        def twice(model: _Tiny) -> Any:
            hidden = jnp.tanh(model.h(X)) + jnp.tanh(model.h(0.5 * X))
            return jnp.mean((model.out(hidden) - Y) ** 2)

        report = gg.check(twice, m, seed=0)
        assert report.passed, str(report)
        assert sorted(t.name for t in report.params) == sorted(
            ["h/bias", "h/kernel", "out/bias", "out/kernel"]
        )
