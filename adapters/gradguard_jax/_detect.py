"""Whether an object is JAX params, answered without importing JAX (the einops pattern).

If the user holds a JAX array, a Flax NNX module or an Equinox module, the framework is in
``sys.modules`` already; if it is not there, nothing the user holds can be one of its objects.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["is_jax_params", "kind_of"]


def _nnx_module(obj: object) -> bool:
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def _eqx_module(obj: object) -> bool:
    eqx = sys.modules.get("equinox")
    return eqx is not None and isinstance(obj, eqx.Module)


def kind_of(obj: Any) -> str | None:
    """``"nnx"``, ``"equinox"``, ``"pytree"`` (a pytree holding a JAX array), or None."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    if _nnx_module(obj):
        return "nnx"
    if _eqx_module(obj):
        return "equinox"
    from gradguard.kit.tree import holds_any
    from gradguard_jax._tree import expand

    try:
        held = holds_any(obj, lambda leaf: isinstance(leaf, jax.Array), expand=expand)
    except Exception:  # a container JAX cannot flatten is not ours
        return None
    return "pytree" if held else None


def is_jax_params(obj: object) -> bool:
    """Whether the JAX adapter should claim ``obj``."""
    from gradguard_jax import JaxParams

    return isinstance(obj, JaxParams) or kind_of(obj) is not None
