"""Finding the tensors to check in TensorFlow and Keras params, and naming them."""

from __future__ import annotations

import re
from typing import Any

import attrs
import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import numpy.typing as npt
import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.engine.numerics import SUPPORTED_DTYPES
from gradguard.errors import InvalidParamsError
from gradguard.kit.memory import identity_extent, refuse_shared
from gradguard.kit.tree import path_name, walk

__all__ = ["Collected", "Slot", "collect", "read_value"]

_SUFFIX = re.compile(r":\d+$")


@attrs.define(eq=False)
class Slot:
    """One checked tensor.

    Attributes:
        name: Its name in the report: the Keras variable path (``dense/kernel``), the
            tf.Variable's name, or the dict keys leading to it (``encoder.w``).
        variable: What the user holds: a ``keras.Variable`` or a ``tf.Variable``.
        resource: The ``tf.Variable`` that stores the values (a Keras 3 variable wraps one).
        is_keras: Whether ``variable`` is a Keras variable (read through a StatelessScope).
        dtype: The variable's dtype.
        saved: The values when the check opened (a private copy, in ``dtype``).
    """

    name: str
    variable: Any
    resource: Any
    is_keras: bool
    dtype: np.dtype[Any]
    saved: npt.NDArray[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.saved.shape)


@attrs.define(eq=False)
class Collected:
    """What a params container holds: the tensors to check, the other state, the layers.

    Attributes:
        slots: The tensors to check, in report order.
        state: Other variables the loss may read or write (non-trainable variables, seed
            generator states, frozen layers' weights), snapshotted and put back.
        layers: The Keras layers found (for a float64 trace).
    """

    slots: list[Slot]
    state: list[Any]
    layers: list[Any]


def _is_keras_variable(obj: object) -> bool:
    return isinstance(obj, keras.Variable)


def resource_of(variable: Any) -> Any:
    """The ``tf.Variable`` holding a Keras or TensorFlow variable's values."""
    if _is_keras_variable(variable):
        # Outside any StatelessScope or autocast scope, KerasVariable.value is the
        # tf.Variable itself (keras/src/backend/tensorflow/core.py).
        value = variable.value
        if not isinstance(value, tf.Variable):
            raise InvalidParamsError(
                f"variable {variable.path!r} is not initialized (it reads as a "
                f"{type(value).__name__}, not a tf.Variable): build the model (call it once on "
                "a batch) before checking it, outside any Keras scope"
            )
        return value
    return variable


def read_value(variable: Any) -> npt.NDArray[Any]:
    """A private NumPy copy of a variable's current values."""
    return np.array(resource_of(variable).numpy(), copy=True)


def _variable_name(variable: Any) -> str:
    if _is_keras_variable(variable):
        return str(variable.path)
    return _SUFFIX.sub("", str(variable.name))


def _trainables(container: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(trainable variables, other variables, layers) of a Keras layer or a tf.Module."""
    if isinstance(container, keras.Layer):
        trainable = list(container.trainable_variables)
        ids = {id(v) for v in trainable}
        state = [v for v in container.variables if id(v) not in ids]
        if not container.built and not trainable:
            raise InvalidParamsError(
                f"{type(container).__name__} {container.name!r} is not built, so it has no "
                "variables yet: call it once on a batch (model(x)) or build it "
                "(model.build(input_shape)) before checking it"
            )
        return trainable, state, [container]
    trainable = list(container.trainable_variables)
    ids = {id(v) for v in trainable}
    state = [v for v in container.variables if id(v) not in ids]
    return trainable, state, []


def _describe(container: Any) -> str:
    name = getattr(container, "name", None)
    kind = type(container).__name__
    return f"{kind} {name!r}" if name else kind


def collect(params: Any) -> Collected:
    """The tensors to check in ``params``, validated.

    Raises:
        InvalidParamsError: a leaf is not a variable, a layer or a module; a variable is not
            float; there is nothing to check.
    """
    entries: list[tuple[str | None, Any]] = []  # (name from dict keys, or None; variable)
    state: list[Any] = []
    layers: list[Any] = []
    containers: list[Any] = []
    for path, leaf in walk(params):
        if isinstance(leaf, tf.Variable) or _is_keras_variable(leaf):
            keyed = path and any(not isinstance(part, int) for part in path)
            entries.append((path_name(path) if keyed else None, leaf))
        elif isinstance(leaf, keras.Layer | tf.Module):
            trainable, others, found = _trainables(leaf)
            if not trainable:
                raise InvalidParamsError(
                    f"{_describe(leaf)} has no trainable variables (all its layers are frozen, "
                    "trainable=False, or it holds no weights): nothing to check; unfreeze the "
                    "layers to check, or pass the variables themselves"
                )
            entries.extend((None, v) for v in trainable)
            state.extend(others)
            layers.extend(found)
            containers.append(leaf)
        elif isinstance(leaf, tf.Tensor):
            raise InvalidParamsError(
                f"{path_name(path)!r} is a tf.Tensor of shape {tuple(leaf.shape)}, which "
                "cannot be perturbed: gradients are checked with respect to variables; wrap "
                "it, tf.Variable(tensor), and have the loss read the variable"
            )
        else:
            raise InvalidParamsError(
                f"{path_name(path)!r} is a {type(leaf).__module__}.{type(leaf).__qualname__}; "
                "the TensorFlow adapter checks tf.Variable and keras.Variable objects, "
                "keras models and layers, and tf.Module objects (and dicts, lists and tuples "
                "of them): leave it out of params or make it a variable"
            )

    # The same variable reached twice (listed twice, or a model and one of its layers) would
    # be perturbed as two tensors that move together: refused, as in every adapter.
    refuse_shared(
        [
            (keyed_name or _variable_name(variable), identity_extent(resource_of(variable)))
            for keyed_name, variable in entries
        ]
    )
    slots: list[Slot] = []
    for keyed_name, variable in entries:
        resource = resource_of(variable)
        name = keyed_name or _variable_name(variable)
        dtype = resource.dtype
        if not dtype.is_floating or np.dtype(dtype.as_numpy_dtype) not in SUPPORTED_DTYPES:
            raise InvalidParamsError(
                f"variable {name!r} (shape {tuple(resource.shape)}) has dtype {dtype.name}; "
                "only float16, float32 and float64 variables can be checked: leave it out of "
                "params (pass the float variables only), or mark it trainable=False"
            )
        saved = read_value(variable)
        if saved.size == 0:
            continue
        slots.append(
            Slot(
                name=name,
                variable=variable,
                resource=resource,
                is_keras=_is_keras_variable(variable),
                dtype=saved.dtype,
                saved=saved,
            )
        )
    if not slots:
        what = ", ".join(_describe(c) for c in containers) or "params"
        raise InvalidParamsError(
            f"{what} holds no non-empty float variable to check: build the model (call it "
            "on a batch), unfreeze its layers, or pass the variables the loss depends on"
        )
    _deduplicate_names(slots)
    checked = {id(slot.resource) for slot in slots}
    unique_state: dict[int, Any] = {}
    for variable in state:
        resource = resource_of(variable)
        if id(resource) not in checked:
            unique_state.setdefault(id(resource), variable)
    return Collected(slots=slots, state=list(unique_state.values()), layers=layers)


def _deduplicate_names(slots: list[Slot]) -> None:
    """Make names unique: raw tf.Variables are often all called ``Variable``."""
    counts: dict[str, int] = {}
    for slot in slots:
        counts[slot.name] = counts.get(slot.name, 0) + 1
    taken = {name for name, count in counts.items() if count == 1}
    used: dict[str, int] = {}
    for slot in slots:
        if counts[slot.name] == 1:
            continue
        base = slot.name
        k = used.get(base, 0)
        while f"{base}_{k}" in taken:
            k += 1
        slot.name = f"{base}_{k}"
        used[base] = k + 1
        taken.add(slot.name)
