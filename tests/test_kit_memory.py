"""One refusal, one message, for params that share memory."""

from __future__ import annotations

import numpy as np
import pytest

from gradguard import InvalidParamsError
from gradguard.kit.memory import identity_extent, numpy_extent, refuse_shared


def test_disjoint_extents_pass_and_overlapping_ones_are_named() -> None:
    """Any overlap is found, not only between neighbours; the message names both tensors."""
    refuse_shared([("a", (0, 10)), ("b", (10, 20)), ("empty", (5, 5))])
    with pytest.raises(InvalidParamsError, match="'big' and 'inner' share memory"):
        refuse_shared([("big", (0, 100)), ("mid", (100, 120)), ("inner", (40, 50))])


def test_a_confirming_function_clears_interleaved_views() -> None:
    """Overlapping extents that share no element (interleaved columns) are allowed."""
    w = np.zeros((4, 2))
    arrays = [w[:, 0], w[:, 1]]
    extents = [("c0", numpy_extent(arrays[0])), ("c1", numpy_extent(arrays[1]))]
    with pytest.raises(InvalidParamsError):
        refuse_shared(extents)
    refuse_shared(extents, lambda i, j: bool(np.shares_memory(arrays[i], arrays[j])))


def test_identity_extents_catch_the_same_object_twice() -> None:
    """Objects that cannot alias (variables) overlap only with themselves."""
    a, b = object(), object()
    refuse_shared([("a", identity_extent(a)), ("b", identity_extent(b))])
    with pytest.raises(InvalidParamsError, match="the same array passed twice"):
        refuse_shared([("a", identity_extent(a)), ("again", identity_extent(a))])
