"""The JAX adapter: what it claims and names, bad input, restoration, x64, tracing, optax.

Real JAX, Flax NNX, Equinox and optax; no mocks.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradguard as gg
from gradguard_jax import JaxParams
from zoo import jax_models

X = jax.random.normal(jax.random.key(0), (8, 3))


def linear_loss(p: Any) -> Any:
    return jnp.mean(jnp.tanh(X @ p["w"] + p["b"]) ** 2)


def linear_params() -> dict[str, Any]:
    return {"w": jax.random.normal(jax.random.key(1), (3, 2)), "b": jnp.zeros(2)}


class Pair(NamedTuple):
    weight: Any
    shift: Any


# -- claiming and naming ----------------------------------------------------------------------


def test_importing_gradguard_does_not_import_jax() -> None:
    """`import gradguard` and a NumPy check load the JAX plugin without importing JAX."""
    code = (
        "import sys, numpy as np, gradguard as gg\n"
        "gg.check(lambda p: float((p**2).sum()), np.ones(3), lambda p: 2*p)\n"
        "print('jax' in sys.modules, 'flax' in sys.modules, 'equinox' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]


def test_names_are_key_paths() -> None:
    """Tensors are named by their pytree key paths, joined with '/'; a lone array is 'params'."""
    params = {"enc": [Pair(jnp.ones((2, 2)), jnp.ones(2))], "scale": jnp.ones(())}

    def loss(p: Any) -> Any:
        pair = p["enc"][0]
        return jnp.sum(jnp.sin(pair.weight @ pair.shift)) * p["scale"]

    report = gg.check(loss, params)
    assert [t.name for t in report.params] == ["enc/0/weight", "enc/0/shift", "scale"]
    assert report.passed, str(report)
    lone = gg.check(lambda w: jnp.sum(jnp.cos(w)), jnp.arange(3.0))
    assert [t.name for t in lone.params] == ["params"]
    assert lone.adapter == "jax"


def test_nnx_and_equinox_names() -> None:
    """An NNX module is named by its attribute paths; an Equinox module by its fields."""
    model, loss = jax_models.all_cases()[4].build()
    names = [t.name for t in gg.check(loss, model).params]
    assert names == [
        "hidden/bias",
        "hidden/kernel",
        "norm/bias",
        "norm/scale",
        "out/bias",
        "out/kernel",
    ]
    module, eloss = jax_models.all_cases()[6].build()
    report = gg.check(eloss, module)
    assert [t.name for t in report.params] == [
        "hidden/weight",
        "hidden/bias",
        "out/weight",
        "out/bias",
    ]  # the integer field `steps` is not a parameter


# -- bad input --------------------------------------------------------------------------------


def test_integer_leaf_is_an_error() -> None:
    """An integer leaf in a params pytree is an InvalidParamsError naming it and the fix."""
    params = {"w": jnp.ones(3), "count": jnp.array(3)}
    with pytest.raises(gg.InvalidParamsError, match=r"'count'.*int32.*leave integer"):
        gg.check(lambda p: jnp.sum(p["w"]) * p["count"], params)


def test_non_scalar_loss_is_an_error() -> None:
    """A loss returning a vector is a LossError that says to reduce it."""
    with pytest.raises(gg.LossError, match=r"shape \(8, 2\).*jnp.mean"):
        gg.check(lambda p: X @ p["w"] + p["b"], linear_params())


def test_leaked_tracer_is_an_error() -> None:
    """A loss that uses a tracer leaked from an earlier jit is a LossError."""
    leaked: list[Any] = []

    @jax.jit
    def leak(x: Any) -> Any:
        leaked.append(x)
        return x

    leak(jnp.ones(2))
    with pytest.raises(gg.LossError, match="leaked"):
        gg.check(lambda p: jnp.sum(p["w"]) + jnp.sum(leaked[0]), linear_params())


def test_check_inside_jit_is_an_error() -> None:
    """Params that are tracers (check called inside jax.jit) are an InvalidParamsError."""
    errors: list[BaseException] = []

    @jax.jit
    def inside(w: Any) -> Any:
        try:
            gg.check(lambda v: jnp.sum(v**2), w)
        except gg.InvalidParamsError as exc:
            errors.append(exc)
        return w

    inside(jnp.ones(3))
    assert errors and "tracer" in str(errors[0])


def test_loss_that_ignores_params_is_an_error() -> None:
    """A loss computed from a closure, not from what it receives, is a LossError."""
    params = linear_params()
    with pytest.raises(gg.LossError, match="does not depend"):
        gg.check(lambda p: linear_loss(params), params)


def test_params_on_several_devices_is_an_error() -> None:
    """Params on two devices (two host CPU devices here) are an InvalidParamsError."""
    code = (
        "import jax, jax.numpy as jnp, gradguard as gg\n"
        "d0, d1 = jax.devices()[:2]\n"
        "p = {'a': jax.device_put(jnp.ones(2), d0), 'b': jax.device_put(jnp.ones(2), d1)}\n"
        "try:\n"
        "    gg.check(lambda p: jnp.sum(p['a'] * p['b']), p)\n"
        "except gg.InvalidParamsError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR params live on several devices"), out.stdout


def test_user_gradient_errors() -> None:
    """A given gradient of the wrong shape or with NaNs is a GradientError naming the tensor."""
    params = linear_params()
    bad_shape = {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}
    with pytest.raises(gg.GradientError, match=r"'w' has shape \(2, 3\)"):
        gg.check(linear_loss, params, bad_shape)
    nan = {"w": jnp.full((3, 2), jnp.nan), "b": jnp.ones(2)}
    with pytest.raises(gg.GradientError, match="non-finite"):
        gg.check(linear_loss, params, nan)


# -- gradients: jax.grad, custom rules, and given ones ----------------------------------------


def test_given_gradients_in_each_structure() -> None:
    """grad as a pytree, an nnx.State from nnx.grad, an Equinox module from eqx.filter_grad."""
    params = linear_params()
    assert gg.check(linear_loss, params, jax.grad(linear_loss)).passed
    wrong = jax.tree_util.tree_map(lambda g: g * 1.2, jax.grad(linear_loss)(params))
    assert set(gg.check(linear_loss, params, wrong).failed) == {"w", "b"}

    model, loss = jax_models.all_cases()[4].build()  # NNX, dropout and BatchNorm in train mode
    report = gg.check(loss, model, nnx.grad(loss))
    assert report.passed, str(report)  # the same dropout mask on both sides
    assert "grad given" in str(report.notes["evaluation"])

    module, eloss = jax_models.all_cases()[6].build()
    assert gg.check(eloss, module, eqx.filter_grad(eloss)).passed


# -- numerics ---------------------------------------------------------------------------------


def test_float32_layer_falls_back_to_native_and_says_why() -> None:
    """A model that casts to float32 internally is judged in float32, and notes say why."""
    model = nnx.Linear(3, 1, dtype=jnp.float32, rngs=nnx.Rngs(0))

    def loss(m: Any) -> Any:
        return jnp.mean(m(X) ** 2)

    report = gg.check(loss, model)
    assert report.dtype == "float32"
    assert "no float64 shadow: the loss still computes in float32" in str(
        report.notes["evaluation"]
    )
    assert report.passed, str(report)
    with pytest.raises(gg.SettingsError, match="precision='float64'"):
        gg.check(loss, JaxParams(model, precision="float64"))


def test_native_precision_is_float32() -> None:
    """JaxParams(precision='native') evaluates a float32 pytree in float32."""
    report = gg.check(linear_loss, JaxParams(linear_params(), precision="native"))
    assert report.dtype == "float32" and report.passed, str(report)
    assert report.notes["x64"] == "not used"


def test_x64_is_on_only_for_the_check_thread() -> None:
    """While the check traces, x64 is on in its thread and off everywhere else, and after."""
    seen: dict[str, bool] = {}

    def loss(p: Any) -> Any:
        seen["check thread"] = bool(jax.config.read("jax_enable_x64"))
        other = threading.Thread(
            target=lambda: seen.setdefault("other thread", jax.config.read("jax_enable_x64"))
        )
        other.start()
        other.join()
        return linear_loss(p)

    gg.check(loss, linear_params())
    assert seen == {"check thread": True, "other thread": False}
    assert jax.config.read("jax_enable_x64") is False


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_interrupted_check_leaves_everything_as_it_was(exception: type[BaseException]) -> None:
    """An exception or Ctrl-C inside the loss leaves x64 off and the NNX state untouched."""
    model, loss = jax_models.all_cases()[4].build()
    before = jax.tree_util.tree_leaves(nnx.state(model))
    calls = {"n": 0}

    def failing(m: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the gradient's trace, after the evaluation's
            raise exception("interrupted")
        return loss(m)

    with pytest.raises(exception):
        gg.check(failing, model)
    after = jax.tree_util.tree_leaves(nnx.state(model))
    assert all(a is b for a, b in zip(before, after, strict=True))
    assert jax.config.read("jax_enable_x64") is False


def test_a_check_traces_the_loss_once_and_a_second_check_reuses_it() -> None:
    """Evaluations take the perturbed tensor as an argument: one trace for the evaluation and
    one for the gradient, whatever the number of probes; a second check traces nothing."""
    traces = {"n": 0}

    def loss(p: Any) -> Any:
        traces["n"] += 1  # runs at trace time only
        return linear_loss(p)

    report = gg.check(loss, linear_params(), sample="all")
    assert report.evaluations > 16
    assert traces["n"] == 2
    again = gg.check(loss, linear_params(), sample="all")
    assert traces["n"] == 2
    assert again.notes["trace"] == "reused from an earlier check"


def test_untraceable_loss_runs_eagerly_with_a_given_gradient() -> None:
    """A loss that converts a traced value to Python runs eagerly; the notes say so."""

    def loss(p: Any) -> Any:
        # float() of a traced value: untraceable; always 1.0, so no step can flip it.
        sign = 1.0 if float(jnp.sum(p["w"] ** 2)) >= 0 else -1.0
        return sign * linear_loss(p)

    report = gg.check(loss, linear_params(), jax.grad(linear_loss))
    assert report.passed, str(report)
    assert "eager" in str(report.notes["evaluation"])


# -- a Guard in a plain optax loop ------------------------------------------------------------


def _train(with_guard: bool) -> tuple[Any, list[gg.CheckReport]]:
    params = linear_params()
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)
    guard = gg.Guard(linear_loss, params, every=5, max_checks=2) if with_guard else None
    step = jax.jit(lambda p, s: _update(optimizer, p, s))
    for _ in range(12):
        params, state = step(params, state)
        if guard is not None:
            guard.params = params  # the loop's new pytree: the guard checks the current one
            guard.step()
    return params, list(guard.reports) if guard is not None else []


def _update(optimizer: Any, params: Any, state: Any) -> tuple[Any, Any]:
    grads = jax.grad(linear_loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_guard_in_an_optax_loop_checks_and_leaves_training_bit_identical() -> None:
    """A Guard given the current params each step checks them; training is bit-identical."""
    plain, _ = _train(with_guard=False)
    guarded, reports = _train(with_guard=True)
    assert len(reports) == 2 and all(r.passed for r in reports)
    for a, b in zip(
        jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(guarded), strict=True
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# -- the example ------------------------------------------------------------------------------


def _run_example(name: str, *args: str) -> str:
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / name
    result = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_vjp_example_catches_the_bug_upstream_and_trains_bit_identically(
    tmp_path: Any,
) -> None:
    """examples/jax_custom_vjp.py fails hidden/* (upstream of the GELU), passes out/*, stops
    the buggy optax loop at its first check, and leaves the fixed one bit-identical."""
    log = tmp_path / "jax.jsonl"
    out = _run_example("jax_custom_vjp.py", "--log", str(log))
    assert "FAILED, 2 of 4 tensors wrong: hidden/bias, hidden/kernel" in out
    assert "the guard stopped training: gradient check failed on hidden/bias, hidden/kernel" in out
    assert "PASSED, all 4 tensors agree" in out
    assert "x64 setting afterwards: False" in out
    assert "trained 1 of 30 steps" in out
    assert "trained 30 of 30 steps; bit-identical to training without a guard: True" in out
    assert len(log.read_text().splitlines()) >= 4
