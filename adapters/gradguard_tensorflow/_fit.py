"""The TensorFlow backend's part of the Keras callback (:class:`gradguard_keras.GradCheckCallback`).

The callback is one class for every Keras backend (``gradguard_keras``); what it checks on
the TensorFlow backend comes from here: the compiled model's loss on the probe batch
(:func:`~gradguard_tensorflow.model_loss`, evaluated through compiled ``tf.function`` calls, a
float64 trace by default), reused by a later ``fit`` of the same compiled model, validated by
one eager forward pass inside a ``StatelessScope`` (nothing written), and checked outside any
``tf.distribute`` strategy's replica context. ``gradguard_tensorflow.GradCheckCallback`` is
the same class as ``gradguard_keras.GradCheckCallback``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.kit.options import Precision
from gradguard.kit.signals import protected, session
from gradguard_tensorflow import _compat
from gradguard_tensorflow._distribute import outside_strategy
from gradguard_tensorflow._loss import ModelLoss, model_loss
from gradguard_tensorflow._options import TFParams

__all__ = ["FitTarget", "fit_target", "looks_unbatched"]

T = TypeVar("T")


@attrs.frozen
class FitTarget:
    """What the Keras callback checks on the TensorFlow backend, and how.

    Attributes:
        loss: The loss the guard checks (a :class:`~gradguard_tensorflow.ModelLoss`).
        params: What the guard checks it on (``TFParams(model, precision)``).
        evaluate_once: The loss on the probe, once, eagerly, nothing written.
        run: Runs a check (outside a ``tf.distribute`` strategy's replica context).
        key: Reused by the next ``fit`` while this is unchanged (the model's compiled loss).
    """

    loss: ModelLoss
    params: Any
    evaluate_once: Callable[[], float]
    run: Callable[[Callable[[], Any]], Any]
    key: Any


def fit_target(
    model: Any,
    batch: tuple[Any, Any, Any],
    *,
    training: bool,
    precision: Precision,
    previous: FitTarget | None,
) -> FitTarget:
    """The compiled model's loss on the probe batch; ``previous`` is reused when it is of the
    same model, compiled the same way (tracing a model costs more than a check)."""
    compiled = _compat.compiled_loss(model)  # a new object at each compile
    if previous is not None and previous.loss.model is model and previous.key is compiled:
        loss = previous.loss
    else:
        x, y, sample_weight = batch
        loss = model_loss(model, x, y, sample_weight, training=training)
    return FitTarget(
        loss=loss,
        params=TFParams(model, precision=precision),
        evaluate_once=lambda: outside_strategy(lambda: _evaluate_once(loss)),
        run=outside_strategy,
        key=compiled,
    )


def _evaluate_once(loss: ModelLoss) -> float:
    """The loss on the probe, computed once, eagerly, with nothing written.

    The model's variables are read through a ``StatelessScope`` that maps each to its
    current value, so every write the forward pass makes (BatchNormalization statistics,
    seed generators, loss trackers) lands in the scope and is dropped, and a
    ``tf.custom_gradient`` sees tensors, as in a traced training step, not variables.
    """
    variables = [v for v in loss.model.variables if isinstance(v, keras.Variable)]
    mapping = [(v, tf.convert_to_tensor(v.value)) for v in variables]
    with session(), protected(keras.StatelessScope(state_mapping=mapping, collect_losses=True)):
        value = loss()
    return float(np.asarray(value))


def looks_unbatched(dataset: Any) -> bool:
    """Whether a ``tf.data.Dataset``'s elements have no batch dimension: ``.batch(n)`` gives
    every component a leading ``None`` (``drop_remainder=True`` a known size, not told apart)."""
    specs = tf.nest.flatten(dataset.element_spec)
    shapes: list[Any] = [spec.shape for spec in specs if hasattr(spec, "shape")]
    if not shapes or len(shapes) != len(specs) or any(s.rank is None for s in shapes):
        return False
    return not any(s.rank > 0 and s[0] is None for s in shapes)
