"""gradguard's JAX adapter plugin.

Claims pytrees of JAX arrays (dicts, lists, tuples, NamedTuples, registered pytree nodes),
Flax NNX modules (their ``nnx.Param`` state) and Equinox modules (their inexact array
leaves), and :class:`JaxParams` carrying options::

    import gradguard as gg

    report = gg.check(lambda p: loss_fn(p, x, y), params)          # a params pytree
    report = gg.check(lambda m: jnp.mean((m(x) - y) ** 2), model)   # an NNX or Equinox model

The analytic gradient is ``jax.grad`` of the loss (so ``custom_vjp`` and ``custom_jvp``
rules are what is checked), or ``grad`` as for NumPy. Every loss evaluation is a call of the
loss compiled once with ``jax.jit``, the perturbed tensor passed as an argument. A float32
model is evaluated in a float64 shadow with x64 enabled only around the check's own calls;
the user's pytree, module state and RNG streams are never written. ``docs/jax.md`` has the
design and the measurements.

``check_grads`` is ``jax.test_util.check_grads`` with this verdict (float32 without x64).

Importing this module does not import JAX: the claim hook looks in ``sys.modules`` first.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from gradguard import hookimpl
from gradguard.kit.contract import Adapter, FlatView
from gradguard.kit.options import PrecisionParams
from gradguard_jax._check_grads import CheckGradsError, check_grads
from gradguard_jax._detect import is_jax_params

__all__ = [
    "CheckGradsError",
    "JaxAdapter",
    "JaxParams",
    "check_grads",
    "gradguard_adapter_claim",
    "is_jax_params",
]


@attrs.frozen
class JaxParams(PrecisionParams):
    """JAX params with options for how the check evaluates the loss.

    ``gg.check(loss, JaxParams(params, precision="native"))`` checks ``params`` exactly as
    ``gg.check(loss, params)`` would, with the options below; the loss still receives
    ``params`` (or the model). The fields and their validation are the kit's
    (:mod:`gradguard.kit.options`).

    Attributes:
        params: A pytree of JAX arrays, a Flax NNX module or an Equinox module.
        precision: How the loss is evaluated (``docs/jax.md``, "Numerics"):

            - ``"auto"`` (default): ``"float64"`` when ``grad`` is ``None`` and the loss
              computes entirely in float64 once its inputs are float64, else ``"native"``;
              ``report.notes["evaluation"]`` says which and why.
            - ``"float64"``: a float64 shadow (x64 on for the check's own computations
              only): loss, finite differences and ``jax.grad`` in float64; an error if the
              loss still computes in a lower precision.
            - ``"native"``: evaluate in the params' own dtype.
    """


class JaxAdapter(Adapter):
    """Claims JAX pytrees, Flax NNX modules and Equinox modules."""

    name: ClassVar[str] = "jax"
    autodiff: ClassVar[bool] = True

    def open(self, params: Any, loss: Any, grad: Any) -> FlatView:
        from gradguard_jax._view import JaxView

        if isinstance(params, JaxParams):
            return JaxView(params.params, loss, grad, params.precision)
        return JaxView(params, loss, grad, "auto")


_ADAPTER = JaxAdapter()


@hookimpl(trylast=True)
def gradguard_adapter_claim(params: object) -> JaxAdapter | None:
    """Claim JAX arrays, pytrees of them, Flax NNX modules and Equinox modules."""
    return _ADAPTER if is_jax_params(params) else None
