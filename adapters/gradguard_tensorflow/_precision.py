"""Tracing a Keras model in float64 without cloning it.

A ``tf.function`` reads Python state only while it traces. So a float64 evaluation of a
float32 model needs no float64 copy of the model: while the loss is traced, every layer's
dtype policy, the loss objects' dtypes and ``keras.config.floatx()`` are switched to
float64, and the variables are read through a ``StatelessScope`` that maps them to
float64 values; right after the trace, everything is put back. The traced graph then
computes in float64 whenever the model is called through it, and the user's objects are
as they were. Whether it worked is read from the graph afterwards
(:func:`gradguard_tensorflow._graph.float_precisions`), not assumed: a layer that
hard-codes ``tf.float32`` leaves float32 ops in the graph, and the check then evaluates
in the model's own dtype instead.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import keras  # type: ignore[import-untyped]  # Keras ships no type information

from gradguard_tensorflow import _compat

__all__ = ["Float64Unavailable", "float64_trace", "loss_objects", "referenced", "sublayers"]


class Float64Unavailable(Exception):
    """The loss cannot be evaluated in float64; the message says why (for the report)."""


def sublayers(roots: Sequence[Any]) -> list[Any]:
    """Every Keras layer under ``roots`` (themselves included), each once."""
    layers: list[Any] = []
    seen: set[int] = set()
    for root in roots:
        for layer in _compat.flatten_layers(root):
            if id(layer) not in seen:
                seen.add(id(layer))
                layers.append(layer)
    return layers


def loss_objects(roots: Sequence[Any], loss: Any) -> list[Any]:
    """The ``keras.losses.Loss`` objects a loss may use: compiled losses of the models under
    ``roots``, and losses the loss callable holds in its closure or names as globals."""
    found: dict[int, Any] = {}
    stack: list[tuple[Any, int]] = []
    for layer in sublayers(roots):
        compiled = _compat.compiled_loss(layer)
        if compiled is not None:
            stack.append((compiled, 0))
    for value in referenced(loss):
        stack.append((value, 0))
    while stack:
        obj, depth = stack.pop()
        if depth > 6 or id(obj) in found:
            continue
        if isinstance(obj, keras.losses.Loss):
            found[id(obj)] = obj
            children: Any = vars(obj).values()
        elif isinstance(obj, list | tuple):
            children = obj
        elif isinstance(obj, dict):
            children = obj.values()
        else:
            continue
        stack.extend((child, depth + 1) for child in children)
    return list(found.values())


def referenced(function: Any) -> list[Any]:
    """Objects a callable closes over or names as globals (one level, no calls made)."""
    values: list[Any] = []
    if not inspect.isfunction(function) and hasattr(function, "__dict__"):
        values.extend(vars(function).values())  # a callable object's attributes
    closure = getattr(function, "__closure__", None) or ()
    for cell in closure:
        with contextlib.suppress(ValueError):  # an empty cell
            values.append(cell.cell_contents)
    code = getattr(function, "__code__", None)
    namespace = getattr(function, "__globals__", None)
    if code is not None and isinstance(namespace, dict):
        values.extend(namespace[name] for name in code.co_names if name in namespace)
    return values


@contextlib.contextmanager
def float64_trace(roots: Sequence[Any], loss: Any) -> Iterator[None]:
    """Switch the layers under ``roots``, their compiled losses and floatx to float64.

    Everything switched is put back on exit, whatever happens inside.

    Raises:
        Float64Unavailable: a layer has a quantized or per-path dtype policy.
    """
    policy = keras.DTypePolicy("float64")
    layers = sublayers(roots)
    for layer in layers:
        current = _compat.dtype_policy(layer)
        if current is None or type(current) is not keras.DTypePolicy:
            raise Float64Unavailable(
                f"layer {layer.name!r} has dtype policy {current!r} (quantized or per-path "
                "policies are not switched to float64)"
            )
    losses = loss_objects(roots, loss)
    floatx = keras.config.floatx()
    saved_layers: list[tuple[Any, Any]] = []
    saved_losses: list[tuple[Any, Any, Any]] = []
    try:
        keras.config.set_floatx("float64")
        for layer in layers:
            saved_layers.append((layer, _compat.dtype_policy(layer)))
            _compat.set_dtype_policy(layer, policy)
        for obj in losses:
            saved_losses.append((obj, *_compat.loss_dtypes(obj)))
            _compat.set_loss_dtypes(obj, "float64", policy)
        yield
    finally:
        for obj, dtype, loss_policy in reversed(saved_losses):
            _compat.set_loss_dtypes(obj, dtype, loss_policy)
        for layer, layer_policy in reversed(saved_layers):
            _compat.set_dtype_policy(layer, layer_policy)
        keras.config.set_floatx(floatx)
