"""Every private TensorFlow and Keras API the adapter uses, in one place.

Each function below wraps one use, says why no public API serves, and is pinned by a test in
``tests/test_tf_compat.py`` against the installed TensorFlow and Keras, so an upgrade that
removes or changes one fails there, loudly, by name. Where the adapter can go on without the
private API (slower, or less precise), the function falls back and warns once; it never
falls back silently.

The uses: ``ConcreteFunction._call_flat`` (:func:`call_flat`),
``handle_data_util.get_resource_handle_data`` (:func:`resource_dtype`),
``Layer._flatten_layers`` (:func:`flatten_layers`), reads and writes of ``Layer._dtype_policy``
(:func:`dtype_policy`, :func:`set_dtype_policy`) and of ``Loss._dtype`` / ``Loss._dtype_policy``
(:func:`loss_dtypes`, :func:`set_loss_dtypes`), ``Model._compile_loss``
(:func:`compiled_loss`), and filling ``StatelessScope.state_mapping`` (:func:`map_state`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information
from tensorflow.python.ops import (  # type: ignore[import-untyped]  # no public equivalent
    handle_data_util,
)

__all__ = [
    "call_flat",
    "compiled_loss",
    "dtype_policy",
    "flatten_layers",
    "loss_dtypes",
    "map_state",
    "resource_dtype",
    "set_dtype_policy",
    "set_loss_dtypes",
]

_warned: set[str] = set()


def _warn_once(what: str, consequence: str) -> None:
    if what in _warned:
        return
    _warned.add(what)
    warnings.warn(
        f"gradguard: this TensorFlow/Keras has no {what}; {consequence}. Please report it "
        "(gradguard_tensorflow/_compat.py names every private API gradguard uses).",
        RuntimeWarning,
        stacklevel=3,
    )


def call_flat(concrete: Any) -> Callable[..., Any]:
    """A fast caller of a concrete function, for arguments of exactly its signature's dtypes.

    ``ConcreteFunction.__call__`` binds and checks its arguments against the signature in
    Python, which costs as much as a small model's forward pass; the adapter builds its
    arguments with the right dtypes, so it calls the flat entry point.
    """
    flat = getattr(concrete, "_call_flat", None)
    if flat is None:
        _warn_once("ConcreteFunction._call_flat", "each evaluation goes through the slower call")
        return concrete  # type: ignore[no-any-return]  # a ConcreteFunction is callable
    captured = list(concrete.captured_inputs)

    def call(*args: Any) -> Any:
        return flat(list(args), captured)

    return call


def resource_dtype(internal: Any) -> Any:
    """The dtype of the variable behind a captured resource placeholder, or ``None``."""
    try:
        data = handle_data_util.get_resource_handle_data(internal)
    except Exception:  # no handle data: not a variable we can read back
        return None
    types = [entry.dtype for entry in data.shape_and_type]
    if len(types) != 1 or types[0] == tf.variant.as_datatype_enum:
        return None
    return tf.as_dtype(types[0])


def flatten_layers(root: Any) -> list[Any]:
    """Every Keras layer under ``root``, itself included (what ``Layer.losses`` walks)."""
    flatten = getattr(root, "_flatten_layers", None)
    if flatten is None:
        _warn_once("Layer._flatten_layers", "nested layers are not switched to float64")
        return [root]
    return list(flatten(include_self=True, recursive=True))


def dtype_policy(layer: Any) -> Any:
    """A layer's dtype policy object, or ``None`` when it has none."""
    return getattr(layer, "_dtype_policy", None)


def set_dtype_policy(layer: Any, policy: Any) -> None:
    """Set a layer's dtype policy for a trace: the private attribute, not the public
    ``dtype_policy`` setter, which may quantize a built layer."""
    layer._dtype_policy = policy


def loss_dtypes(loss: Any) -> tuple[Any, Any]:
    """A Keras loss object's ``(dtype, dtype policy or None)``."""
    return loss._dtype, getattr(loss, "_dtype_policy", None)


def set_loss_dtypes(loss: Any, dtype: Any, policy: Any) -> None:
    """Set a Keras loss object's compute dtype (and policy, where it has one)."""
    loss._dtype = dtype
    if policy is not None and hasattr(loss, "_dtype_policy"):
        loss._dtype_policy = policy


def compiled_loss(model: Any) -> Any:
    """The loss object ``model.compile(loss=...)`` made (a new one at each compile), or ``None``."""
    return getattr(model, "_compile_loss", None)


def map_state(scope: Any, variable: Any, value: Any) -> None:
    """Make ``variable`` read ``value`` inside a ``keras.StatelessScope``, in ``value``'s dtype
    (the constructor's ``state_mapping=`` would cast a float64 value to the variable's dtype)."""
    scope.state_mapping[id(variable)] = value
