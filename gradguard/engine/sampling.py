"""Which coordinates and which directions a check probes, drawn from a private generator.

Nothing here touches NumPy's global random state: every draw comes from the
``numpy.random.Generator`` the caller passes, seeded from the check's recorded seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "allocate",
    "rademacher_signs",
    "sample_among_nonzero",
    "sample_coordinates",
    "sample_where_gradient_lives",
]


def allocate(sizes: Sequence[int], k: int, rng: np.random.Generator) -> list[int]:
    """Split ``k`` coordinates over tensors of the given sizes, stratified.

    Every tensor gets at least one coordinate (biases included) when ``k`` allows; the rest go
    in proportion to the tensors' sizes (largest remainder), never more than a tensor holds.
    When ``k`` is smaller than the number of tensors, ``k`` tensors drawn at random get one
    each (the random directions still cover every tensor).
    """
    n_tensors = len(sizes)
    counts = [0] * n_tensors
    total = sum(sizes)
    k = min(k, total)
    if k <= 0:
        return counts
    if k < n_tensors:
        for t in rng.choice(n_tensors, size=k, replace=False):
            counts[int(t)] = 1
        return counts
    counts = [1 if size > 0 else 0 for size in sizes]
    remaining = k - sum(counts)
    while remaining > 0:
        room = [size - c for size, c in zip(sizes, counts, strict=True)]
        capacity = sum(room)
        if capacity == 0:
            break
        shares = [remaining * r / capacity for r in room]
        whole = [min(int(s), r) for s, r in zip(shares, room, strict=True)]
        given = sum(whole)
        if given < remaining:
            order = sorted(
                range(n_tensors), key=lambda t: (shares[t] - whole[t], room[t]), reverse=True
            )
            for t in order:
                if given == remaining:
                    break
                if whole[t] < room[t]:
                    whole[t] += 1
                    given += 1
        counts = [c + w for c, w in zip(counts, whole, strict=True)]
        remaining -= given
    return counts


def sample_coordinates(
    sizes: Sequence[int], counts: Sequence[int], rng: np.random.Generator
) -> list[npt.NDArray[np.intp]]:
    """Draw ``counts[t]`` distinct flat positions in each tensor ``t``, sorted."""
    picks = []
    for size, count in zip(sizes, counts, strict=True):
        if count >= size:
            picks.append(np.arange(size, dtype=np.intp))
        elif count == 0:
            picks.append(np.empty(0, dtype=np.intp))
        else:
            chosen = rng.choice(size, size=count, replace=False)
            picks.append(np.sort(chosen).astype(np.intp))
    return picks


def sample_where_gradient_lives(
    grad: npt.NDArray[np.float64], count: int, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """Draw ``count`` distinct positions, half of them among the non-zero entries of ``grad``.

    A sparse gradient (an embedding whose batch uses a few rows) puts a uniform draw on zero
    rows, where the analytic and numeric values agree whatever the code does. Half the draw
    goes where the gradient lives; the other half stays uniform over the rest, so a gradient
    that is wrongly zero somewhere can still be caught there. Sorted, like
    :func:`sample_coordinates`.
    """
    nonzero = np.flatnonzero(grad)
    return sample_among_nonzero(
        grad.size, nonzero.size, lambda ranks: nonzero[ranks].astype(np.intp), count, rng
    )


def sample_among_nonzero(
    size: int,
    nonzero: int,
    nth_nonzero: Callable[[npt.NDArray[np.intp]], npt.NDArray[np.intp]],
    count: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.intp]:
    """:func:`sample_where_gradient_lives` without the gradient: the same draws, from its size,
    its number of non-zero entries and a lookup of the k-th non-zero entry's position (a
    sharded gradient answers that collectively, without gathering)."""
    first = nth_nonzero(
        np.asarray(rng.choice(nonzero, size=min((count + 1) // 2, nonzero), replace=False))
    )
    # The second half is uniform over the positions not already drawn (``rest``); choosing
    # among ``size - len(first)`` ranks draws exactly as choosing from that array would.
    ranks = np.asarray(rng.choice(size - first.size, size=count - first.size, replace=False))
    second = _nth_not_in(np.sort(first), ranks)
    return np.sort(np.concatenate([first, second])).astype(np.intp)


def _nth_not_in(excluded: npt.NDArray[np.intp], ranks: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """The ``ranks``-th (0, 1, ...) of ``0, 1, 2, ...`` once the sorted ``excluded`` are out."""
    out = np.asarray(ranks, dtype=np.intp).copy()
    for e in excluded:
        out[out >= e] += 1
    return out


def rademacher_signs(size: int, rng: np.random.Generator) -> npt.NDArray[np.int8]:
    """Random signs, +1 or -1 as int8: a Rademacher direction before scaling by 1/sqrt(size).

    Every element takes part with the same weight, so an error in any single element changes
    the directional derivative by a known amount. Signs from random bits, kept as int8, cost an
    eighth of the memory traffic of float64 directions on million-element tensors.
    """
    bits = np.unpackbits(np.frombuffer(rng.bytes((size + 7) // 8), dtype=np.uint8), count=size)
    signs = bits.view(np.int8)
    signs *= 2
    signs -= 1
    return signs
