"""gradguard's TensorFlow / Keras adapter plugin.

Claims ``tf.Variable`` and ``keras.Variable`` objects, ``keras.Model`` and ``keras.Layer``
objects and ``tf.Module`` objects (their trainable variables), and dicts, lists and tuples
of them::

    import gradguard as gg
    from gradguard_tensorflow import TFParams, model_loss

    report = gg.check(model_loss(model, x, y), model)          # a compiled Keras model
    report = gg.check(lambda m: my_loss(m(x), y), model)       # any loss(model) -> scalar
    report = gg.check(loss, TFParams(model, precision="native"))  # float32, faster

    from gradguard_tensorflow import GradCheckCallback         # checks during model.fit
    model.fit(x, y, callbacks=[GradCheckCallback(probe=(x_probe, y_probe), every=100)])

``GradCheckCallback`` is :class:`gradguard_keras.GradCheckCallback`, the one Keras callback for
every backend, re-exported under this name; on the TensorFlow backend it checks what
:mod:`gradguard_tensorflow._fit` defines (``model_loss``, compiled, float64 by default).

The analytic gradient comes from ``tf.GradientTape`` (or ``grad``, as for NumPy); every
loss evaluation is a compiled ``tf.function`` call. Keras variables are never written (the
loss reads the perturbed values through a ``StatelessScope``), plain ``tf.Variable``
objects only by dense assigns, never sparse writes; everything is bit-identical afterwards.
A float32 Keras model is evaluated through a float64 trace of itself by default.
``docs/tensorflow.md`` and ``docs/keras.md`` have the design, the numerics and the
measurements.

Importing this module does not import TensorFlow: a user who holds a TensorFlow object has
it in ``sys.modules`` already, and the claim hook looks there first. ``GradCheckCallback``
subclasses ``keras.callbacks.Callback``, so it is loaded (with Keras) on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradguard import hookimpl
from gradguard_tensorflow._adapter import TensorFlowAdapter
from gradguard_tensorflow._detect import is_tensorflow_params
from gradguard_tensorflow._loss import ModelLoss, model_loss
from gradguard_tensorflow._options import TFParams

if TYPE_CHECKING:
    from gradguard_keras._callback import GradCheckCallback

__all__ = [
    "GradCheckCallback",
    "ModelLoss",
    "TFParams",
    "TensorFlowAdapter",
    "gradguard_adapter_claim",
    "is_tensorflow_params",
    "model_loss",
]

_ADAPTER = TensorFlowAdapter()


@hookimpl(trylast=True)
def gradguard_adapter_claim(params: object) -> TensorFlowAdapter | None:
    """Claim TensorFlow and Keras variables, models, layers and modules (and containers of them)."""
    return _ADAPTER if is_tensorflow_params(params) else None


def __getattr__(name: str) -> Any:
    # PEP 562: a keras.callbacks.Callback subclass needs Keras when its class is defined, and
    # importing this plugin must not import Keras (gradguard loads every plugin at start).
    if name == "GradCheckCallback":  # the one Keras callback, kept under its first name
        from gradguard_keras._callback import GradCheckCallback

        return GradCheckCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
