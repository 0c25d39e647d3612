"""Which objects belong to TensorFlow or Keras, found without importing either.

A user who holds a TensorFlow or Keras object has already imported the framework, so the
question is answered from ``sys.modules`` (the einops pattern): when neither module is
loaded, nothing is TensorFlow's, and the answer costs a dictionary lookup.
"""

from __future__ import annotations

import sys
from typing import Any

from gradguard.kit.tree import holds_any

__all__ = ["is_tensorflow_object", "is_tensorflow_params", "keras_module", "tensorflow_module"]


def tensorflow_module() -> Any | None:
    """The ``tensorflow`` module if it is already imported, else ``None``."""
    return sys.modules.get("tensorflow")


def keras_module() -> Any | None:
    """The ``keras`` module if it is imported *and* runs on the TensorFlow backend, else ``None``.

    Keras 3 can also run on JAX or PyTorch; those variables and layers are not TensorFlow's,
    and another adapter may claim them.
    """
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    try:
        name = backend() if callable(backend) else None
    except Exception:  # a half-imported keras: not ours to judge
        return None
    return keras if name == "tensorflow" else None


def _leaf_types() -> tuple[type, ...]:
    types: list[type] = []
    tf = tensorflow_module()
    if tf is not None:
        types += [
            t for t in (getattr(tf, "Variable", None), getattr(tf, "Module", None)) if t is not None
        ]
        tensor = getattr(tf, "Tensor", None)
        if isinstance(tensor, type):
            types.append(tensor)
    keras = keras_module()
    if keras is not None:
        types += [t for t in (getattr(keras, "Variable", None), getattr(keras, "Layer", None)) if t]
    return tuple(t for t in types if isinstance(t, type))


def is_tensorflow_object(obj: object) -> bool:
    """Whether ``obj`` is a tf.Variable, tf.Module, tf.Tensor, keras.Variable or keras.Layer."""
    types = _leaf_types()
    return bool(types) and isinstance(obj, types)


def is_tensorflow_params(obj: object) -> bool:
    """Whether the TensorFlow adapter should take ``obj``.

    True for a TensorFlow or Keras object, a :class:`~gradguard_tensorflow.TFParams`, and a
    dict, list or tuple nesting at least one TensorFlow object (any other leaf then gets a
    clear error when the check opens, rather than "no adapter").
    """
    from gradguard_tensorflow._options import TFParams

    if isinstance(obj, TFParams):
        return True
    types = _leaf_types()
    if not types:
        return False
    return holds_any(obj, lambda leaf: isinstance(leaf, types))
