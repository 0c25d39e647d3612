"""Each private TensorFlow / Keras API the adapter uses, pinned against the installed versions.

An upgrade that removes or changes one of them fails here, by name (gradguard_tensorflow/
_compat.py is the only module that touches them).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradguard_tensorflow import _compat


def _tiny(compiled: bool = True) -> keras.Model:
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="inner")
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="o")])
    if compiled:
        model.compile(loss="mse")
    return model


def test_call_flat_is_the_private_entry_point_and_agrees_with_the_public_call() -> None:
    """ConcreteFunction._call_flat exists and returns what the public call returns."""
    v = tf.Variable(2.0, dtype=tf.float64)
    concrete = tf.function(
        lambda x: tf.reduce_sum(x) * v, input_signature=[tf.TensorSpec([None], tf.float64)]
    ).get_concrete_function()
    assert hasattr(concrete, "_call_flat")
    x = tf.constant([1.0, 2.5], tf.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path must not warn
        fast = _compat.call_flat(concrete)
    assert float(fast(x)) == float(concrete(x)) == 7.0


def test_resource_dtype_reads_a_captured_variables_dtype() -> None:
    """handle_data_util gives the dtype of each variable a traced function captures."""
    a, b = tf.Variable([1.0], dtype=tf.float32), tf.Variable([1], dtype=tf.int64)
    concrete = tf.function(lambda: tf.cast(b, tf.float32) + a).get_concrete_function()
    dtypes = {
        id(external): _compat.resource_dtype(internal)
        for external, internal in concrete.graph.captures
        if external.dtype == tf.resource
    }
    assert dtypes == {id(a.handle): tf.float32, id(b.handle): tf.int64}
    assert _compat.resource_dtype(tf.constant(1.0)) is None


def test_flatten_layers_lists_nested_layers_and_the_root() -> None:
    """Layer._flatten_layers walks into nested models and includes the root."""
    model = _tiny()
    names = [layer.name for layer in _compat.flatten_layers(model)]
    assert names[0] == model.name and {"inner", "d", "o"} <= set(names)


def test_a_layers_dtype_policy_can_be_switched_for_a_trace_and_put_back() -> None:
    """Writing Layer._dtype_policy makes the layer compute in float64; writing the saved
    policy back restores float32, with the weights untouched."""
    model = _tiny()
    dense = model.get_layer("o")
    saved = _compat.dtype_policy(dense)
    assert isinstance(saved, keras.DTypePolicy) and saved.name == "float32"
    x = np.ones((1, 2), np.float64)
    _compat.set_dtype_policy(dense, keras.DTypePolicy("float64"))
    try:
        assert dense(x).dtype == tf.float64
    finally:
        _compat.set_dtype_policy(dense, saved)
    assert dense(x).dtype == tf.float32 and dense.kernel.dtype == "float32"


def test_a_loss_objects_dtype_can_be_switched_and_put_back() -> None:
    """Loss._dtype (and _dtype_policy) set the dtype a Keras loss computes in."""
    loss = keras.losses.MeanSquaredError()
    y = np.ones((2, 1), np.float64)
    saved = _compat.loss_dtypes(loss)
    assert saved[0] == "float32"
    _compat.set_loss_dtypes(loss, "float64", keras.DTypePolicy("float64"))
    try:
        assert loss(y, 2 * y).dtype == tf.float64
    finally:
        _compat.set_loss_dtypes(loss, *saved)
    assert loss(y, 2 * y).dtype == tf.float32


def test_compiled_loss_is_the_loss_compile_made() -> None:
    """Model._compile_loss holds compile(loss=...)'s loss object; None before compile."""
    assert _compat.compiled_loss(_tiny(compiled=False)) is None
    compiled = _compat.compiled_loss(_tiny())
    assert compiled is not None
    value = compiled(np.ones((2, 1), np.float32), np.zeros((2, 1), np.float32))
    assert float(value) == pytest.approx(1.0)


def test_map_state_keeps_the_mapped_values_dtype() -> None:
    """A value put in StatelessScope.state_mapping is what the variable reads, float64
    included (the constructor would cast it to the variable's float32)."""
    variable = keras.Variable(np.ones(2, np.float32))
    scope = keras.StatelessScope()
    _compat.map_state(scope, variable, tf.constant([3.0, 4.0], tf.float64))
    with scope:
        read: Any = variable.value
    assert read.dtype == tf.float64 and read.numpy().tolist() == [3.0, 4.0]
    assert variable.numpy().tolist() == [1.0, 1.0]


def test_a_missing_private_api_falls_back_and_warns_once() -> None:
    """Without _call_flat the public call is used, with one RuntimeWarning, never silently."""

    class Public:
        def __call__(self, x: float) -> float:
            return 2 * x

    _compat._warned.discard("ConcreteFunction._call_flat")
    with pytest.warns(RuntimeWarning, match="no ConcreteFunction._call_flat"):
        call = _compat.call_flat(Public())
    assert call(3.0) == 6.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compat.call_flat(Public())  # once only
