"""What a caller may decide for the engine: which tensors and which coordinates to probe.

A single check draws both itself, from its seeded generator. A front door that checks the same
parameters repeatedly (the Guard) rotates over the tensors and takes coordinates not probed by
earlier checks; that run-long state is the front door's, and reaches the engine only through
this protocol (``gradguard.rotation.Rotation`` implements it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout

__all__ = ["Selection"]


class Selection(Protocol):
    """The caller's choice of tensors and coordinates for one check."""

    def tensors(self, layout: Layout, chosen: Sequence[int]) -> Sequence[int]:
        """The tensors to check this time: a subset of ``chosen`` (layout positions)."""

    def coordinates(self, name: str, size: int, count: int) -> npt.NDArray[np.intp]:
        """``count`` distinct flat positions of tensor ``name`` (``size`` elements) to probe."""

    def coverage(self, layout: Layout) -> float | None:
        """The fraction of the layout's elements probed one by one so far (for the report)."""
