"""Options for a TensorFlow check, carried with the params (``check`` has no adapter options).

The fields and their validation are the kit's (:mod:`gradguard.kit.options`); this class says
what they mean for TensorFlow.
"""

from __future__ import annotations

import attrs

from gradguard.errors import SettingsError
from gradguard.kit.options import PRECISIONS, Precision, PrecisionParams

__all__ = ["PRECISIONS", "Precision", "TFParams"]


def _check_bool(_: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise SettingsError(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen
class TFParams(PrecisionParams):
    """TensorFlow or Keras params with options for how the check evaluates the loss.

    ``gg.check(loss, TFParams(model, precision="native"))`` checks ``model`` exactly as
    ``gg.check(loss, model)`` would, with the options below; the loss still receives ``model``.

    Attributes:
        params: What to check: a keras.Model or keras.Layer, a tf.Module, a tf.Variable or
            keras.Variable, or a dict, list or tuple of them.
        precision: How the loss is evaluated (``docs/tensorflow.md``, "Numerics"):

            - ``"auto"`` (default): ``"float64"`` when the Keras model traces cleanly in
              float64, else ``"native"``; the report's ``notes`` say which and why.
            - ``"float64"``: evaluate a float64 trace of the model (loss, finite differences
              and analytic gradient all in float64, tolerance 1e-6); an error if it cannot.
            - ``"native"``: evaluate in the variables' own dtype (float32: tolerance 1e-2,
              with the engine's noise-aware second look).
        native_gradient: With a float64 trace of a float32 Keras model, take the analytic
            gradient from the model as it trains (a float32 GradientTape through the same
            StatelessScope), judged with the float32 gradient's tolerance (1e-5), so a
            ``tf.custom_gradient`` that is wrong only in float32 is caught (default ``True``).
            ``False``: the float64 trace's own gradient, as before.
    """

    native_gradient: bool = attrs.field(default=True, validator=_check_bool)
