"""``order=2``, ``mode="forward"`` and ``gradguard_jax.check_grads`` through the JAX adapter.

Planted bugs are real ones: a ``custom_vjp`` whose ``bwd`` wraps its factor in
``stop_gradient`` (right gradient, wrong Hessian), and a ``custom_jvp`` rule off by 1%.
Float32 params without x64 enabled: the adapter's float64 shadow does the numerics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

import gradguard as gg
import gradguard_jax
from gradguard.errors import GradientCheckError, SettingsError
from gradguard.results import Status


def _softplus(stop: bool) -> Any:
    @jax.custom_vjp
    def softplus(x: Any) -> Any:
        return jnp.logaddexp(x, 0.0)

    def fwd(x: Any) -> Any:
        return softplus(x), x

    def bwd(x: Any, g: Any) -> Any:
        s = jax.nn.sigmoid(x)
        return (g * (jax.lax.stop_gradient(s) if stop else s),)

    softplus.defvjp(fwd, bwd)
    return softplus


def _sin(error: float) -> Any:
    @jax.custom_jvp
    def sin(x: Any) -> Any:
        return jnp.sin(x)

    @sin.defjvp
    def sin_jvp(primals: Any, tangents: Any) -> Any:
        (x,), (t,) = primals, tangents
        return jnp.sin(x), jnp.cos(x) * t * (1.0 + error)

    return sin


X = jax.random.normal(jax.random.key(0), (12, 3))
Y = jax.random.normal(jax.random.key(1), (12,))
# Two branches: one through the buggy rule, one through its correct twin, checked at once.
PARAMS = {
    "bad": jax.random.normal(jax.random.key(2), (3, 5)),
    "good": jax.random.normal(jax.random.key(3), (3, 5)),
    "v": jax.random.normal(jax.random.key(4), (5,)),
}


def _loss(bad: Any, good: Any) -> Any:
    return lambda p: jnp.mean(((bad(X @ p["bad"]) + good(X @ p["good"])) @ p["v"] - Y) ** 2)


def test_custom_vjp_with_a_non_differentiable_bwd_fails_order2() -> None:
    """The gradient is right (order 1 passes); its derivative misses sigmoid' in the branch
    whose bwd stops it: that tensor fails, its correct twin and v pass; float32 params, x64
    left off."""
    loss = _loss(_softplus(stop=True), _softplus(stop=False))
    assert gg.check(loss, PARAMS, seed=0).passed
    report = gg.check(loss, PARAMS, order=2, seed=0)
    assert report.failed == ("bad",)
    assert report["good"].status is Status.PASS
    assert report["v"].status is Status.PASS
    assert report.dtype == "float64"
    assert "reverse over reverse" in str(report.notes["hvp"])
    assert jax.config.read("jax_enable_x64") is False


def test_custom_jvp_rule_in_forward_mode() -> None:
    """A 1% wrong custom_jvp rule fails forward mode on its branch; the right rule's passes."""
    report = gg.check(_loss(_sin(0.01), _sin(0.0)), PARAMS, mode="forward", seed=0)
    assert report.failed == ("bad",)
    assert report["good"].passed


def _f(error: float) -> Any:
    sin = _sin(error)
    return lambda x, y: sin(x) * y + x**2


ARGS = (jax.random.normal(jax.random.key(4), (3, 4)), jax.random.normal(jax.random.key(5), (3, 4)))


def test_check_grads_passes_right_rules_in_float32() -> None:
    """jax.test_util.check_grads's call in float32: a right custom_vjp at order 2 (reverse
    over reverse) and a right custom_jvp at order 2 in both modes pass; x64 stays off."""
    gradguard_jax.check_grads(_softplus(stop=False), (ARGS[0],), order=2, modes=("rev",))
    gradguard_jax.check_grads(_f(0.0), ARGS, order=2)
    assert jax.config.read("jax_enable_x64") is False


def test_check_grads_raises_an_assertion_error_with_the_table() -> None:
    """A 0.1% wrong rule, which jax's own float32 check_grads passes, raises an AssertionError
    naming argument 0 (the one the rule differentiates)."""
    with pytest.raises(AssertionError) as caught:
        gradguard_jax.check_grads(_f(1e-3), ARGS, order=1, modes=("fwd",))
    error = caught.value
    assert isinstance(error, GradientCheckError)
    assert isinstance(error, gradguard_jax.CheckGradsError)
    assert error.report.failed == ("0",)
    assert "order 1, fwd" in str(error)


def test_check_grads_reverse_mode_sees_a_wrong_bwd() -> None:
    """modes=("rev",): a custom_vjp whose bwd drops sigmoid' fails at order 2 only."""
    with pytest.raises(gradguard_jax.CheckGradsError, match="order 2") as caught:
        gradguard_jax.check_grads(_softplus(stop=True), (ARGS[0],), order=2, modes=("rev",))
    assert caught.value.reports[0][1].passed  # order 1, rev


@pytest.mark.parametrize(
    ("options", "match"), [({"order": 3}, "order=1 and order=2"), ({"modes": ("bwd",)}, "modes")]
)
def test_check_grads_bad_settings(options: dict[str, Any], match: str) -> None:
    """Orders above 2 and unknown modes are SettingsErrors."""
    arguments: dict[str, Any] = {"order": 1, **options}
    with pytest.raises(SettingsError, match=match):
        gradguard_jax.check_grads(_f(0.0), ARGS, **arguments)
