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

Importing this module does not import JAX: the claim hook looks in ``sys.modules`` first.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gradguard import hookimpl
from gradguard.kit.contract import Adapter, FlatView
from gradguard_jax._detect import is_jax_params
from gradguard_jax._options import JaxParams

__all__ = ["JaxAdapter", "JaxParams", "gradguard_adapter_claim", "is_jax_params"]


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
