"""What the engine reads of the parameters and the analytic gradient, and how it writes probes.

Everything the check needs from the original values ``x`` and the analytic gradient ``g`` is a
handful of reductions: norms and largest magnitudes, single elements, directional derivatives
``g . v``, counts and positions of non-zero entries, a write of ``x + step * v``. An ordinary
view hands the engine whole flat vectors and :class:`DenseValues` computes these from them. A
view over tensors no process holds whole (a sharded model: each rank holds a shard) serves the
same reductions itself (local partial results, then one collective), and the engine never asks
it for a whole vector: :class:`TensorValues` is that contract (the optional methods of
:class:`~gradguard.kit.contract.FlatView`, whose ``partitioned`` flag selects it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from gradguard.engine.directions import Direction

if TYPE_CHECKING:
    from gradguard.engine.layout import Layout

__all__ = ["DenseValues", "TensorValues", "transposed_positions"]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


class TensorValues(Protocol):
    """The reductions of the original values and the analytic gradient the engine uses.

    ``segment`` is a tensor's position in the layout, positions are flat indices into the whole
    (unsharded) tensor. Every method may be collective for a partitioned view: the engine calls
    them in the same order on every process.
    """

    def original_summary(self) -> tuple[FloatArray, FloatArray]:
        """Per tensor, the sum of squares and the largest magnitude of its original values."""
        ...

    def gradient_summary(self) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        """Per tensor, the sum of squares of its gradient and its count of non-zeros."""
        ...

    def element(self, segment: int, local: int) -> tuple[float, float]:
        """One element's original value and analytic gradient."""
        ...

    def gradient_elements(
        self, segment: int, positions: IndexArray, transposed: bool = False
    ) -> FloatArray:
        """The gradient at ``positions`` (of the tensor's transpose, for a square matrix)."""
        ...

    def write_along(self, segment: int, direction: Direction, step: float) -> None:
        """Write ``x + step * v`` into the tensor (rounded to its dtype)."""
        ...

    def gradient_along(self, segment: int, direction: Direction, step: float) -> float:
        """The analytic derivative along ``v`` matching the last ``write_along(+step)`` and
        ``write_along(-step)`` pair: ``g . v`` when both were stored exactly, otherwise
        ``g . (x+ - x-) / (2 step)`` over the values actually stored."""
        ...

    def gradient_dot(self, segment: int, direction: Direction, transposed: bool = False) -> float:
        """``g . v`` (of the tensor's transpose, for a square matrix)."""
        ...

    def gradient_dots(self, parts: Sequence[tuple[int, Direction]]) -> FloatArray:
        """``g_t . v`` for each ``(t, v)`` of ``parts``, in order: joint screening's many
        directional derivatives in one call (one collective for a partitioned view)."""
        ...

    def nonzero_positions(self, segment: int, ranks: IndexArray) -> IndexArray:
        """The flat positions of the ``ranks``-th non-zero gradient entries, in flat order."""
        ...

    def largest_gradient_outside(self, segment: int, lo: int, hi: int) -> int | None:
        """The position of the largest ``|g|`` outside ``[lo, hi]`` (first on ties); if every
        entry there is zero, the first position there; ``None`` when there is none."""
        ...


def transposed_positions(positions: IndexArray, shape: Sequence[int]) -> IndexArray:
    """Where each flat position of a square matrix's transpose sits in the matrix."""
    n = int(shape[1])
    return (positions % n) * n + positions // n


class DenseValues:
    """The reductions over whole flat vectors, for views that hand the engine whole tensors.

    Args:
        layout: The view's layout.
        originals: Each tensor's original values, flat float64.
        grad: The whole analytic gradient, flat float64 in layout order.
        write: The view's ``write`` (it returns the values stored).
    """

    def __init__(
        self,
        layout: Layout,
        originals: Sequence[FloatArray],
        grad: FloatArray,
        write: _Write,
    ) -> None:
        self.layout = layout
        self.originals = originals
        self.grad = grad
        self._write = write
        # Two reusable buffers per tensor: no fresh multi-megabyte temporaries per probe.
        self._buffers: dict[int, tuple[FloatArray, FloatArray]] = {}
        self._stored: dict[int, tuple[FloatArray, FloatArray | None]] = {}

    def segment_grad(self, segment: int) -> FloatArray:
        s = self.layout[segment]
        return self.grad[s.offset : s.stop]

    def original_summary(self) -> tuple[FloatArray, FloatArray]:
        squares = np.array([float(np.dot(x, x)) for x in self.originals])
        largest = np.array([float(np.max(np.abs(x))) if x.size else 0.0 for x in self.originals])
        return squares, largest

    def gradient_summary(self) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        segments = range(len(self.layout))
        squares = np.array([float(np.dot(g, g)) for g in map(self.segment_grad, segments)])
        nonzero = [np.count_nonzero(self.segment_grad(s)) for s in segments]
        return squares, np.array(nonzero, dtype=np.int64)

    def element(self, segment: int, local: int) -> tuple[float, float]:
        return float(self.originals[segment][local]), float(self.segment_grad(segment)[local])

    def gradient_elements(
        self, segment: int, positions: IndexArray, transposed: bool = False
    ) -> FloatArray:
        if transposed:
            positions = transposed_positions(positions, self.layout[segment].shape)
        return self.segment_grad(segment)[positions]

    def _buffers_of(self, segment: int) -> tuple[FloatArray, FloatArray]:
        if segment not in self._buffers:
            size = self.layout[segment].size
            self._buffers[segment] = (np.empty(size), np.empty(size))
        return self._buffers[segment]

    def write_along(self, segment: int, direction: Direction, step: float) -> None:
        x = self.originals[segment]
        up, down = self._buffers_of(segment)
        if step > 0.0:
            if direction.whole:  # int8 signs times one float: the values the engine always took
                np.multiply(direction.signs(), step * direction.scale, out=down)
            else:
                np.multiply(direction.values(), step, out=down)
            np.add(x, down, out=up)
            self._stored[segment] = (self._write(segment, None, up), None)
        else:
            # ``down`` still holds step * v from the +step write of this pair.
            np.subtract(x, down, out=down)
            plus = self._stored[segment][0]
            self._stored[segment] = (plus, self._write(segment, None, down))

    def gradient_along(self, segment: int, direction: Direction, step: float) -> float:
        up, down = self._buffers_of(segment)
        plus, minus = self._stored.pop(segment)
        assert minus is not None, "gradient_along needs a write_along(+step), (-step) pair"
        g = self.segment_grad(segment)
        if plus is up and minus is down and self.layout[segment].dtype == np.float64:
            # Stored as computed: x +- step*v differ from step*v by float64 rounding only,
            # ~1e-16 |x| per element, averaging out; g . v is then exact to ~1e-10 relative.
            return self.gradient_dot(segment, direction)
        # The analytic change along the steps actually stored (rounded to the tensor's
        # dtype), from their difference: dot(g, plus) - dot(g, minus) would cancel.
        np.subtract(plus, minus, out=up)
        return float(np.dot(g, up)) / (2.0 * step)

    def gradient_dot(self, segment: int, direction: Direction, transposed: bool = False) -> float:
        g = self.segment_grad(segment)
        if transposed:
            g = g.reshape(self.layout[segment].shape).T.reshape(-1)
        if direction.whole:
            return float(np.dot(g, direction.signs())) * direction.scale
        lo, hi = direction.lo, direction.hi
        return float(np.dot(g[lo:hi], direction.signs()[lo:hi])) * direction.scale

    def gradient_dots(self, parts: Sequence[tuple[int, Direction]]) -> FloatArray:
        return np.array([self.gradient_dot(s, v) for s, v in parts], dtype=np.float64)

    def nonzero_positions(self, segment: int, ranks: IndexArray) -> IndexArray:
        return np.flatnonzero(self.segment_grad(segment))[ranks].astype(np.intp)

    def largest_gradient_outside(self, segment: int, lo: int, hi: int) -> int | None:
        g = np.abs(self.segment_grad(segment))
        outside = g.copy()
        outside[lo : hi + 1] = -1.0
        local = int(np.argmax(outside))
        if outside[local] > 0.0:
            return local
        rest = np.flatnonzero(outside == 0.0)
        return int(rest[0]) if rest.size else None


class _Write(Protocol):
    def __call__(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        """A view's ``write``."""
        ...
