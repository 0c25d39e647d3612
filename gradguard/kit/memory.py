"""Refusing params that share memory: the same array passed twice, or views of one buffer.

A check perturbs one tensor while every other keeps its original values. Two entries of
params that share memory break that: perturbing one moves the other, and both get a false
verdict. Every adapter refuses them with the same message, through :func:`refuse_shared`,
given each tensor's memory extent (:func:`numpy_extent` for NumPy arrays, the data pointer
and strides for a framework tensor, :func:`identity_extent` for objects that never alias
each other but may be passed twice, such as variables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gradguard.errors import InvalidParamsError

__all__ = ["Extent", "identity_extent", "numpy_extent", "refuse_shared"]

Extent = tuple[int, int]
"""The address range ``[start, stop)`` a tensor's elements occupy (bytes)."""


def numpy_extent(array: npt.NDArray[Any]) -> Extent:
    """The byte range a NumPy array's elements occupy (strided views included)."""
    start, stop = np.lib.array_utils.byte_bounds(array)
    return int(start), int(stop)


def identity_extent(obj: object) -> Extent:
    """An extent that overlaps only the same object's: for tensors that cannot be views."""
    return id(obj), id(obj) + 1


def refuse_shared(
    extents: Sequence[tuple[str, Extent]], shares: Callable[[int, int], bool] | None = None
) -> None:
    """Refuse two named tensors that share memory.

    Args:
        extents: ``(name, extent)`` per tensor; empty extents (no elements) are skipped.
        shares: ``shares(i, j)``: whether tensors ``i`` and ``j``, whose extents overlap,
            really share an element (two interleaved strided views do not); default: they do.

    Raises:
        InvalidParamsError: two tensors share memory; the message names both.
    """
    order = sorted((extent, i) for i, (_, extent) in enumerate(extents) if extent[1] > extent[0])
    open_: list[tuple[int, int]] = []  # (stop, index) of the spans still open at a start
    for (start, stop), i in order:
        open_ = [(end, j) for end, j in open_ if end > start]
        for _, j in open_:
            if shares is None or shares(j, i):
                name, other = extents[j][0], extents[i][0]
                raise InvalidParamsError(
                    f"parameters {name!r} and {other!r} share memory (the same array passed "
                    "twice, one a view of the other, or both views of one buffer); a check "
                    "perturbs one at a time and the other would move with it: pass each array "
                    "once"
                )
        open_.append((stop, i))
