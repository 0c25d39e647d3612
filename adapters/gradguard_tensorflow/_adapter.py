"""The adapter object the claim hook returns; TensorFlow is imported only when it opens."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar

from gradguard.kit.contract import Adapter, FlatView
from gradguard.kit.locks import default_keys
from gradguard_tensorflow._options import TFParams

__all__ = ["TensorFlowAdapter"]


class TensorFlowAdapter(Adapter):
    """Claims TensorFlow and Keras params; computes the analytic gradient with GradientTape."""

    name: ClassVar[str] = "tensorflow"
    autodiff: ClassVar[bool] = True

    def open(self, params: Any, loss: Callable[..., Any], grad: Any) -> FlatView:
        """Validate ``params`` and return a view; nothing is written until the engine writes.

        A :class:`~gradguard_tensorflow.TFParams` is unwrapped: the loss receives its
        ``params``.
        """
        # Imported here: the claim hook and this module must not import TensorFlow.
        from gradguard_tensorflow._view import TensorFlowView

        precision, native_gradient = "auto", True
        if isinstance(params, TFParams):
            precision, native_gradient = params.precision, params.native_gradient
            params = params.params
        return TensorFlowView(params, loss, grad, precision, native_gradient=native_gradient)

    def lock_keys(self, params: Any) -> Iterable[Hashable]:
        """The storage of every variable the check reads or writes, and the params object.

        A model and a list of its variables are the same variables: their checks take turns.
        """
        from gradguard_tensorflow._params import collect, resource_of

        keys = set(default_keys(params))
        try:
            collected = collect(params.params if isinstance(params, TFParams) else params)
        except Exception:  # open() raises the error that explains it
            return keys
        for variable in [*(s.variable for s in collected.slots), *collected.state]:
            keys.add(("tensorflow", id(resource_of(variable))))
        return keys
