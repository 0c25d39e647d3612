"""gradguard's Keras 3 plugin: checks through Keras's stateless API, on any backend.

Claims :class:`KerasProbe` (a Keras model and a probe batch) and provides
:class:`GradCheckCallback` for ``model.fit`` on the TensorFlow, JAX and PyTorch backends::

    from gradguard_keras import GradCheckCallback, KerasProbe

    report = gg.check(probe.loss, KerasProbe(model, x, y))    # fit's loss on (x, y)
    model.fit(x, y, callbacks=[GradCheckCallback(probe=(x_probe, y_probe), every=100)])

``GradCheckCallback`` is the one Keras callback (``gradguard_tensorflow.GradCheckCallback`` is
the same class). On the TensorFlow backend it checks through the TensorFlow adapter (compiled
float64 evaluations of ``model_loss``); on JAX and PyTorch through a :class:`KerasProbe`, in
the variables' own dtype (``jax.jit``-compiled under JAX). Importing this module does not
import Keras: the claim hook only answers for a :class:`KerasProbe`, and the callback
class (a ``keras.callbacks.Callback`` subclass) is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from gradguard import hookimpl
from gradguard.kit.contract import Adapter, FlatView

if TYPE_CHECKING:
    from gradguard_keras._callback import GradCheckCallback
    from gradguard_keras._stateless import KerasProbe

__all__ = ["GradCheckCallback", "KerasAdapter", "KerasProbe", "gradguard_adapter_claim"]


class KerasAdapter(Adapter):
    """Claims :class:`KerasProbe` objects."""

    name: ClassVar[str] = "keras"
    autodiff: ClassVar[bool] = True

    def open(self, params: Any, loss: Any, grad: Any) -> FlatView:
        from gradguard_keras._stateless import StatelessView

        return StatelessView(params, loss, grad)


_ADAPTER = KerasAdapter()


@hookimpl(trylast=True)
def gradguard_adapter_claim(params: object) -> KerasAdapter | None:
    """Claim a :class:`KerasProbe` (a Keras model with its probe batch)."""
    import sys

    module = sys.modules.get("gradguard_keras._stateless")
    if module is None or not isinstance(params, module.KerasProbe):
        return None
    return _ADAPTER


def __getattr__(name: str) -> Any:
    # PEP 562: both need Keras at class definition; importing the plugin must not import it.
    if name == "GradCheckCallback":
        from gradguard_keras._callback import GradCheckCallback

        return GradCheckCallback
    if name == "KerasProbe":
        from gradguard_keras._stateless import KerasProbe

        return KerasProbe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
