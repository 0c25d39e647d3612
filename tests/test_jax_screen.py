"""Joint screening on the JAX adapter: every perturbed tensor is an argument of one jitted call."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

import gradguard as gg
from gradguard_jax._view import JaxView

X = jax.random.normal(jax.random.key(0), (16, 3))
Y = jax.random.normal(jax.random.key(1), (16, 2))


def params() -> dict[str, Any]:
    keys = jax.random.split(jax.random.key(2), 3)
    return {
        "w1": jax.random.normal(keys[0], (3, 5)),
        "b1": 0.1 * jax.random.normal(keys[1], (5,)),
        "w2": jax.random.normal(keys[2], (5, 2)),
        "b2": jnp.zeros(2),
    }


def loss(p: Any) -> Any:
    return jnp.mean((jnp.tanh(X @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - Y) ** 2)


def test_joint_writes_reach_the_compiled_loss_together() -> None:
    """Several tensors written at once are all seen by the one evaluation; resetting them
    gives the original loss back, bit for bit."""
    p = params()
    with JaxView(p, loss, None, "auto") as view:
        assert view.joint_writes
        reference = view.evaluate()
        moved = {s: view.original(s) + 0.01 for s in (0, 2, 3)}
        for s, values in moved.items():
            view.write(s, None, values)
        assert len(view.perturbations) == 3
        names = [segment.name for segment in view.layout]
        with jax.enable_x64(True):  # the float64 shadow the view evaluates in
            shifted = {
                name: jnp.asarray(moved[s].reshape(p[name].shape) if s in moved else p[name])
                for s, name in enumerate(names)
            }
            expected = float(loss({k: v.astype(jnp.float64) for k, v in shifted.items()}))
        assert view.evaluate() == pytest.approx(expected, rel=1e-12)
        for s in moved:
            view.reset(s, None)
        assert view.evaluate() == reference


def test_a_correct_pytree_is_screened_jointly() -> None:
    """The default check screens every tensor jointly: a constant number of evaluations."""
    report = gg.check(loss, params(), seed=0)
    assert report.passed, report
    assert report.notes["strategy"] == "screen"
    assert {p.judged_by for p in report.params} == {"screen"}
    assert report.evaluations <= 2 + 2 * 8 + 2 * 2


def test_a_planted_bug_is_localized_by_group_testing() -> None:
    """A 10% error in one tensor's given gradient (judged in the params' float32, tolerance
    1e-2) fails that tensor alone; the others are cleared by the screen."""
    p = params()

    def buggy(q: Any) -> Any:
        grads = dict(jax.grad(loss)(q))
        grads["w2"] = grads["w2"] * 1.1
        return grads

    report = gg.check(loss, p, buggy, seed=0)
    assert report.notes["strategy"] == "screen"
    assert report.failed == ("w2",)
    assert {report[name].judged_by for name in ("w1", "b1", "b2")} == {"screen"}
