"""A Keras 3 model checked through Keras's own stateless API, on any backend.

``model.stateless_call`` and ``model.stateless_compute_loss`` take the variables' values as
arguments and return new ones instead of writing them, on TensorFlow, JAX and PyTorch alike.
The view keeps the trainable values as NumPy arrays, perturbs its copies, and hands them to
the stateless functions as backend tensors: the model's variables are never written, so
training with checks is bit-identical to training without. The analytic gradient is the
backend's own autodiff of the same function (``tf.GradientTape``, ``jax.grad``,
``torch.autograd.grad``), so a ``keras.ops.custom_gradient`` is what gets checked.
Evaluations run in the variables' own dtype (float32: the engine's noise-aware judgement),
compiled with ``jax.jit`` on the JAX backend, eagerly on PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout
from gradguard.errors import GradientError, InvalidParamsError
from gradguard.kit import notes as kit_notes
from gradguard.kit.buffered import BufferedView
from gradguard.kit.contract import scalar_loss_value
from gradguard.kit.dtypes import least_precise
from gradguard.kit.gradients import autodiff_gradient

__all__ = ["KerasProbe", "StatelessView"]

FloatArray = npt.NDArray[np.float64]


@attrs.frozen
class KerasProbe:
    """A Keras model and the batch its loss is checked on (what the Keras adapter claims).

    The loss checked is the one ``fit`` minimizes on that batch: ``stateless_call`` then
    ``stateless_compute_loss`` (the compiled loss plus regularization losses).
    """

    model: Any
    x: Any
    y: Any = None
    sample_weight: Any = None
    training: bool = False

    def loss(self, _: Any = None) -> float:
        """The loss at the model's current weights, computed statelessly (nothing written)."""
        model = self.model
        trainable = [v.value for v in model.trainable_variables]
        y_pred, non_trainable = model.stateless_call(
            trainable,
            [v.value for v in model.non_trainable_variables],
            self.x,
            training=self.training,
        )
        loss, _ = model.stateless_compute_loss(
            trainable,
            non_trainable,
            [v.value for v in model.metrics_variables],
            x=self.x,
            y=self.y,
            y_pred=y_pred,
            sample_weight=self.sample_weight,
            training=self.training,
        )
        return scalar_loss_value(keras.ops.convert_to_numpy(loss))


def _numpy(value: Any) -> npt.NDArray[Any]:
    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def _gradient(function: Callable[[list[Any]], Any], values: list[Any]) -> list[Any]:
    """The backend's gradient of ``function(values)`` (a scalar) with respect to ``values``."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return list(jax.grad(function)(values))
    if backend == "tensorflow":
        import tensorflow as tf  # type: ignore[import-untyped]

        with tf.GradientTape() as tape:
            for value in values:
                tape.watch(value)
            loss = function(values)
        return list(tape.gradient(loss, values))
    if backend == "torch":
        import torch

        leaves = [v.detach().requires_grad_(True) for v in values]
        loss = function(leaves)
        return list(torch.autograd.grad(loss, leaves, allow_unused=True))
    raise InvalidParamsError(
        f"the Keras backend {backend!r} has no gradient support in gradguard; use "
        "tensorflow, jax or torch"
    )


class StatelessView(BufferedView):
    """A flat view of a Keras model's trainable variables, evaluated statelessly.

    The kit's :class:`~gradguard.kit.buffered.BufferedView` holds the perturbed copies; each
    evaluation passes every trainable value to ``stateless_call``, the perturbed ones among
    them (several at once for a joint probe). On the JAX backend the loss and its gradient
    are ``jax.jit``-compiled once per check (every value an argument, so a probe does not
    retrace); elsewhere they run eagerly.
    """

    adapter = "keras"
    # stateless_call takes every trainable value at once: a joint probe passes several
    # perturbed ones in one evaluation.
    joint_writes = True

    def __init__(self, probe: KerasProbe, loss: Any, grad: Any) -> None:
        model = probe.model
        if not isinstance(model, keras.Model):
            raise InvalidParamsError(f"KerasProbe needs a keras.Model, got {type(model)}")
        if grad is not None:
            raise GradientError(
                "a KerasProbe is checked against the backend's own gradient: pass grad=None"
            )
        self._probe = probe
        self._model = model
        variables = list(model.trainable_variables)
        if not variables:
            raise InvalidParamsError(f"model {model.name!r} has no trainable variables")
        saved = [_numpy(v.value) for v in variables]
        for variable, value in zip(variables, saved, strict=True):
            if not np.issubdtype(value.dtype, np.floating):
                raise InvalidParamsError(
                    f"variable {variable.path!r} has dtype {value.dtype}; only float variables "
                    "can be checked"
                )
        super().__init__(saved)
        self.layout = Layout.from_tensors(
            [(v.path, s.shape, s.dtype) for v, s in zip(variables, self.saved, strict=True)]
        )
        self._tensors = [keras.ops.convert_to_tensor(s) for s in self.saved]
        self._non_trainable = [v.value for v in model.non_trainable_variables]
        self._metrics = [v.value for v in model.metrics_variables]
        self._loss_dtype = least_precise(*(s.dtype for s in self.saved))
        self._backend = keras.backend.backend()
        self._evaluate_fn: Callable[[list[Any]], Any] = self._loss
        self._compiled = "eager"
        if self._backend == "jax":
            import jax

            self._evaluate_fn = jax.jit(self._loss)
            self._compiled = "compiled (jax.jit)"
        self._notes: dict[str, str | int | float | bool | None] = {}

    def _loss(self, trainable: list[Any]) -> Any:
        p = self._probe
        y_pred, non_trainable = self._model.stateless_call(
            trainable, self._non_trainable, p.x, training=p.training
        )
        loss, _ = self._model.stateless_compute_loss(
            trainable,
            non_trainable,
            self._metrics,
            x=p.x,
            y=p.y,
            y_pred=y_pred,
            sample_weight=p.sample_weight,
            training=p.training,
        )
        return loss

    # -- FlatView ------------------------------------------------------------------------------

    def evaluate(self) -> float:
        trainable = list(self._tensors)
        for change in self.perturbations:
            # A copy: the working buffer changes under the next probe, and a backend may
            # alias NumPy memory.
            shape = self.layout[change.segment].shape
            trainable[change.segment] = keras.ops.convert_to_tensor(
                change.values.reshape(shape).copy()
            )
        return scalar_loss_value(keras.ops.convert_to_numpy(self._evaluate_fn(trainable)))

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._loss_dtype

    def gradient(self) -> FloatArray:
        grads = _gradient(self._loss, list(self._tensors))
        return autodiff_gradient(
            self.layout,
            [None if g is None else _numpy(g) for g in grads],
            self._notes,
            source=f"the {self._backend} backend's gradient",
        )

    @property
    def notes(self) -> dict[str, str | int | float | bool | None]:
        return {
            kit_notes.EVALUATION: (
                f"{self._loss_dtype} (the variables' own dtype), stateless_call, {self._compiled}"
            ),
            "keras_backend": self._backend,  # a fact only this adapter has
            **self._notes,
        }
