"""Coverage over a run: successive checks probe coordinates not probed before.

A training-loop front door makes several checks of the same parameters. Drawing each check's
coordinates afresh would probe some elements twice and others never; instead each tensor gets
a random permutation of its elements, drawn once, and every check takes the next positions
from it. Coverage grows by exactly the sample size per check until every element has been
probed once, then the permutation starts over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from gradguard.engine.layout import Layout

__all__ = ["Coverage"]


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
