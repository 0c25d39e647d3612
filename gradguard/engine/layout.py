"""The flat layout of a set of named tensors: what the engine sees of the user's parameters.

Like ``jax.flatten_util.ravel_pytree``, an adapter flattens the params container into one
vector; the :class:`Layout` alone says which slice of that vector belongs to which tensor,
so the engine can name a tensor and an element without knowing the container.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import attrs
import numpy as np

__all__ = ["Layout", "Segment"]


def _to_dtype(value: object) -> np.dtype[np.generic]:
    return np.dtype(value)  # type: ignore[call-overload,no-any-return]  # any dtype-like


def _to_shape(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


@attrs.frozen
class Segment:
    """One named tensor inside the flat vector.

    Attributes:
        name: The tensor's name as the user knows it (``"W1"``, ``"layer1.W"``, ``"dense/kernel"``).
        shape: The tensor's shape (``()`` for a scalar).
        dtype: The tensor's dtype (float16, float32 or float64).
        offset: Where the tensor starts in the flat vector.
    """

    name: str
    shape: tuple[int, ...] = attrs.field(converter=_to_shape)
    dtype: np.dtype[np.generic] = attrs.field(converter=_to_dtype)
    offset: int = 0

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        """One past the tensor's last position in the flat vector."""
        return self.offset + self.size

    def unravel(self, local: int) -> tuple[int, ...]:
        """The multi-dimensional index of the element at flat position ``local`` in this tensor."""
        if not self.shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(local, self.shape))


@attrs.frozen
class Layout:
    """The segments of a flat parameter vector, in order, without gaps."""

    segments: tuple[Segment, ...]

    @classmethod
    def from_tensors(
        cls, entries: Sequence[tuple[str, Sequence[int], np.dtype[np.generic]]]
    ) -> Layout:
        """Build a layout from ``(name, shape, dtype)`` triples, assigning consecutive offsets."""
        segments = []
        offset = 0
        for name, shape, dtype in entries:
            segment = Segment(name=name, shape=tuple(shape), dtype=dtype, offset=offset)
            segments.append(segment)
            offset = segment.stop
        return cls(segments=tuple(segments))

    @property
    def size(self) -> int:
        """Total number of elements."""
        return self.segments[-1].stop if self.segments else 0

    @property
    def names(self) -> tuple[str, ...]:
        """The segment names, in order."""
        return tuple(s.name for s in self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> Segment:
        return self.segments[index]
