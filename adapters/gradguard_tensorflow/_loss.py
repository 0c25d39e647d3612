"""``model_loss``: the loss of a compiled Keras model on a fixed batch, ready for a check."""

from __future__ import annotations

from typing import Any

from gradguard.errors import InvalidParamsError, LossError
from gradguard_tensorflow._detect import keras_module, tensorflow_module

__all__ = ["ModelLoss", "model_loss"]


class ModelLoss:
    """``loss(params)`` for a compiled Keras model: ``model.compute_loss`` on a fixed batch.

    Built by :func:`model_loss`. It always evaluates its own model, whatever ``params`` the
    check hands it (the model itself, or a list of some of its variables), so the same
    object can check a whole model or part of it. The TensorFlow adapter keeps the compiled
    evaluation functions on this object, so checking the same model with the same
    ``ModelLoss`` again (every k steps of a training run) does not trace the model again.

    Attributes:
        model: The compiled ``keras.Model``.
        x, y, sample_weight: The batch, as tensors.
        training: The ``training`` flag passed to the model and to ``compute_loss``.
    """

    def __init__(
        self, model: Any, x: Any, y: Any = None, sample_weight: Any = None, *, training: bool
    ) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.training = training
        # Compiled programs of the TensorFlow adapter, keyed by what they were traced for.
        self.compiled: dict[Any, Any] = {}

    def __call__(self, params: Any = None) -> Any:
        """The model's total loss on the batch (compiled loss plus regularization losses)."""
        y_pred = self.model(self.x, training=self.training)
        return self.model.compute_loss(
            x=self.x,
            y=self.y,
            y_pred=y_pred,
            sample_weight=self.sample_weight,
            training=self.training,
        )

    def __repr__(self) -> str:
        return f"model_loss({getattr(self.model, 'name', self.model)!r}, training={self.training})"


def model_loss(
    model: Any, x: Any, y: Any = None, sample_weight: Any = None, *, training: bool = False
) -> ModelLoss:
    """The loss a compiled Keras model minimizes, on one batch: ``loss(params) -> scalar``.

    ``gg.check(model_loss(model, x, y), model)`` checks the gradient ``model.fit`` would
    use on that batch: the compiled loss plus the regularization losses, through
    ``model.compute_loss``. ``training=False`` (the default) runs Dropout as the identity
    and BatchNormalization with its moving statistics; with ``training=True`` the check
    still sees one fixed dropout mask (the seed generators' state is replayed for every
    evaluation) and BatchNormalization's batch statistics, and no moving statistic changes.

    Args:
        model: A ``keras.Model`` compiled with a loss (``model.compile(loss=...)``), or one
            whose ``compute_loss`` is overridden.
        x: The inputs (array, tensor, or a structure of them, as ``model(x)`` takes).
        y: The targets, as ``model.fit`` takes them.
        sample_weight: Optional sample weights.
        training: The ``training`` flag for the model call and ``compute_loss``.

    Raises:
        InvalidParamsError: ``model`` is not a Keras model on the TensorFlow backend.
        LossError: the model has no loss to compute (not compiled with a loss).
    """
    keras = keras_module()
    tf = tensorflow_module()
    if keras is None or tf is None or not isinstance(model, keras.Model):
        raise InvalidParamsError(
            f"model_loss needs a keras.Model on the TensorFlow backend, got "
            f"{type(model).__module__}.{type(model).__qualname__}; for another loss, pass your "
            "own loss(params) callable to gradguard.check"
        )
    from gradguard_tensorflow import _compat  # TensorFlow is imported by now

    has_compiled_loss = _compat.compiled_loss(model) is not None
    overrides = type(model).compute_loss is not keras.Model.compute_loss
    if not (has_compiled_loss or overrides or model.losses):
        raise LossError(
            f"model {model.name!r} has no loss to compute: compile it with one "
            "(model.compile(optimizer, loss=...)) or pass your own loss(params) callable"
        )

    def as_tensor(value: Any) -> Any:
        return None if value is None else tf.convert_to_tensor(value)

    return ModelLoss(
        model,
        tf.nest.map_structure(as_tensor, x),
        None if y is None else tf.nest.map_structure(as_tensor, y),
        None if sample_weight is None else tf.nest.map_structure(as_tensor, sample_weight),
        training=bool(training),
    )
