"""gradguard's NumPy adapter plugin.

Claims NumPy arrays, NumPy and Python float scalars, and dicts, lists and tuples nesting
them. NumPy has no autodiff, so a check needs ``grad``. It is registered like any
third-party adapter, and ``trylast``: another plugin can claim these containers first.
"""

from __future__ import annotations

from gradguard import hookimpl
from gradguard_numpy._adapter import NumpyAdapter, NumpyView, is_numpy_tree

__all__ = ["NumpyAdapter", "NumpyView", "gradguard_adapter_claim"]

_ADAPTER = NumpyAdapter()


@hookimpl(trylast=True)
def gradguard_adapter_claim(params: object) -> NumpyAdapter | None:
    """Claim arrays, float scalars and dicts/lists/tuples of them."""
    return _ADAPTER if is_numpy_tree(params) else None
