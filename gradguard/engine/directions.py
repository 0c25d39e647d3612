"""Random directions over one tensor, addressed by global element index.

A direction probe moves a whole tensor along a Rademacher unit vector. The engine keeps each
direction as the packed random bits it was drawn from (one bit per element, an eighth of the
int8 signs): the sign of any element can then be read by its global flat index, without
materializing the vector. A view that holds only part of a tensor (a shard on one rank of a
sharded model) reads the signs of the elements it holds, and every rank, or the unsharded model
in one process, sees the same direction.

Joint screening draws the signs of every tensor in one call and hands each tensor its part of
that one bit string: a direction may start ``offset`` bits into its packed bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Direction"]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


class Direction:
    """Rademacher signs over a tensor, restricted to flat positions ``[lo, hi)`` and scaled.

    The value at flat position ``i`` is ``scale * sign_i`` inside ``[lo, hi)`` and ``0``
    outside. Drawn whole (:meth:`draw`), it is a unit vector (``scale = 1/sqrt(size)``);
    bisection restricts it to a block (:meth:`restrict`), again of unit norm.

    Attributes:
        size: The tensor's number of elements.
        lo: The first flat position of the support.
        hi: One past the last.
        scale: The magnitude of every value in the support.
        offset: Where element 0's bit sits in the packed bits (a part of a joint draw).
    """

    __slots__ = ("_packed", "hi", "lo", "offset", "scale", "size")

    def __init__(
        self, packed: npt.NDArray[np.uint8], size: int, lo: int, hi: int, offset: int = 0
    ) -> None:
        self._packed = packed
        self.size = size
        self.lo = lo
        self.hi = hi
        self.offset = offset
        self.scale = 1.0 / math.sqrt(hi - lo) if hi > lo else 0.0

    @classmethod
    def draw(cls, size: int, rng: np.random.Generator) -> Direction:
        """A whole-tensor unit direction (the same draws as ``sampling.rademacher_signs``)."""
        packed = np.frombuffer(rng.bytes((size + 7) // 8), dtype=np.uint8)
        return cls(packed, size, 0, size)

    @classmethod
    def draw_joint(cls, sizes: Sequence[int], rng: np.random.Generator) -> list[Direction]:
        """Whole-tensor unit directions for several tensors from one draw: the signs
        ``sampling.rademacher_signs(sum(sizes))`` draws, split in order."""
        total = int(sum(sizes))
        packed = np.frombuffer(rng.bytes((total + 7) // 8), dtype=np.uint8)
        starts = np.cumsum([0, *sizes])[:-1]
        return [cls(packed, int(n), 0, int(n), int(a)) for n, a in zip(sizes, starts, strict=True)]

    @property
    def whole(self) -> bool:
        """Whether the support is the whole tensor."""
        return self.lo == 0 and self.hi == self.size

    def restrict(self, lo: int, hi: int) -> Direction:
        """The same signs on ``[lo, hi)`` only, scaled to unit norm."""
        return Direction(self._packed, self.size, lo, hi, self.offset)

    def _bits(self, first: int, stop: int) -> npt.NDArray[np.uint8]:
        """The bits of elements ``first, ..., stop - 1``, unpacking only their bytes."""
        a, b = self.offset + first, self.offset + stop
        start_byte = a >> 3
        bits = np.unpackbits(self._packed[start_byte : (b + 7) >> 3])
        return bits[a - 8 * start_byte : b - 8 * start_byte]

    def signs(self) -> npt.NDArray[np.int8]:
        """Every element's sign, +1 or -1 as int8 (zeros outside the support are not applied)."""
        signs = self._bits(0, self.size).view(np.int8)
        signs *= 2
        signs -= 1
        return signs

    def values_between(self, first: int, stop: int) -> FloatArray:
        """The values at flat positions ``first, ..., stop - 1`` (a shard's contiguous block),
        unpacking only those bits."""
        out = self._bits(first, stop).astype(np.float64)
        out *= 2.0 * self.scale  # exact: a power of two times the scale
        out -= self.scale  # 1 -> +scale, 0 -> -scale, exactly
        if not self.whole:
            out[: max(0, min(stop, self.lo) - first)] = 0.0
            out[max(0, max(first, self.hi) - first) :] = 0.0
        return out

    def values(self, positions: IndexArray | None = None) -> FloatArray:
        """The direction's values at flat ``positions`` (``None``: every element), as float64."""
        if positions is None:
            out = self.signs().astype(np.float64)
            out *= self.scale
            out[: self.lo] = 0.0
            out[self.hi :] = 0.0
            return out
        p = np.asarray(positions, dtype=np.intp) + self.offset
        bits = (self._packed[p >> 3] >> (7 - (p & 7)).astype(np.uint8)) & 1
        out = np.where(bits.astype(bool), self.scale, -self.scale)
        if not self.whole:
            p = p - self.offset
            out[(p < self.lo) | (p >= self.hi)] = 0.0
        return out
