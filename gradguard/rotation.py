"""A training-loop front door's rotation over its run: which tensors, which coordinates.

A Guard makes several checks of the same parameters. Two things carry over from one check to
the next, and they are the Guard's state, not the engine's (the engine sees them only through
:class:`gradguard.engine.selection.Selection`):

- *Tensors.* With ``tensors_per_check=k``, check ``i`` takes the ``k`` tensors from position
  ``i * k`` on (modulo their number), so every tensor comes round in turn.
- *Coverage.* Drawing each check's coordinates afresh would probe some elements twice and
  others never; instead each tensor gets a random permutation of its elements, drawn once,
  and every check takes the next positions from it. Coverage grows by exactly the sample size
  per check until every element has been probed once, then the permutation starts over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from gradguard.engine.layout import Layout
    from gradguard.engine.selection import Selection

__all__ = ["Coverage", "Rotation"]


class _Order:
    def __init__(self, size: int, rng: np.random.Generator) -> None:
        dtype = np.int32 if size < 2**31 else np.int64
        self.size = size
        self.permutation = rng.permutation(size).astype(dtype)
        self.cursor = 0  # how many positions have been handed out, over all rounds

    def take(self, count: int) -> npt.NDArray[np.intp]:
        count = min(count, self.size)
        start = self.cursor % self.size
        stop = start + count
        if stop <= self.size:
            picked = self.permutation[start:stop]
        else:  # wrap around: the rest of this round, then the start of the next
            picked = np.concatenate(
                [self.permutation[start:], self.permutation[: stop - self.size]]
            )
        self.cursor += count
        return np.sort(picked).astype(np.intp)

    @property
    def covered(self) -> int:
        return min(self.cursor, self.size)


class Coverage:
    """Which coordinates of which tensors earlier checks of a run have probed.

    Keyed by tensor name; a tensor whose size changed since the last check starts afresh.
    """

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._orders: dict[str, _Order] = {}
        self._made: list[tuple[str, int]] = []  # every order drawn, in drawing order

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`from_state_dict` needs: the orders drawn, in order, and their cursors.

        The permutations themselves are not saved (they would be as large as the model):
        drawn again from the seed in the same order, they are the same.
        """
        return {
            "made": [[name, size] for name, size in self._made],
            "cursors": {name: order.cursor for name, order in self._orders.items()},
        }

    @classmethod
    def from_state_dict(cls, seed: int, state: dict[str, Any]) -> Coverage:
        """The coverage that :meth:`state_dict` saved, for a run made with ``seed``."""
        coverage = cls(seed)
        for name, size in state["made"]:
            coverage._draw(str(name), int(size))
        for name, cursor in state["cursors"].items():
            coverage._orders[name].cursor = int(cursor)
        return coverage

    def _draw(self, name: str, size: int) -> _Order:
        order = self._orders[name] = _Order(size, self._rng)
        self._made.append((name, size))
        return order

    def take(self, name: str, size: int, count: int) -> npt.NDArray[np.intp]:
        """The next ``count`` positions of tensor ``name`` not yet probed in this round."""
        order = self._orders.get(name)
        if order is None or order.size != size:
            order = self._draw(name, size)
        return order.take(count)

    def fraction(self, layout: Layout) -> float:
        """The fraction of the layout's elements probed one by one so far."""
        total = layout.size
        if total == 0:
            return 0.0
        covered = 0
        for segment in layout:
            order = self._orders.get(segment.name)
            if order is not None and order.size == segment.size:
                covered += order.covered
        return covered / total


class _Turn:
    """One check's :class:`~gradguard.engine.selection.Selection` within a rotation."""

    def __init__(self, coverage: Coverage, start: int, count: int | None) -> None:
        self._coverage = coverage
        self._start = start
        self._count = count

    def tensors(self, layout: Layout, chosen: Sequence[int]) -> Sequence[int]:
        if self._count is None or not chosen:
            return chosen
        count = min(self._count, len(chosen))
        window = {chosen[(self._start + i) % len(chosen)] for i in range(count)}
        return [s for s in chosen if s in window]

    def coordinates(self, name: str, size: int, count: int) -> npt.NDArray[np.intp]:
        return self._coverage.take(name, size, count)

    def coverage(self, layout: Layout) -> float | None:
        return self._coverage.fraction(layout)


class Rotation:
    """The tensors and coordinates successive checks of one run take, in turn.

    Args:
        seed: Seeds the permutations (one run, one seed: reproducible).
        tensors_per_check: Tensors per check, rotating; ``None``: all of them every time.
    """

    def __init__(self, seed: int, tensors_per_check: int | None = None) -> None:
        self.coverage = Coverage(seed)
        self.tensors_per_check = tensors_per_check

    def turn(self, index: int) -> Selection:
        """The selection for the run's check number ``index`` (from 0)."""
        per_check = self.tensors_per_check
        start = 0 if per_check is None else index * per_check
        return _Turn(self.coverage, start, per_check)
