"""Host-side work buffers for frameworks whose arrays are immutable (generic, framework-free).

A JAX array cannot be written in place, so the view keeps, per checked tensor, its original
values and a NumPy work copy in the dtype the loss is evaluated in; the engine's writes land
in the work copy, and an evaluation passes the one perturbed tensor to a compiled function as
an argument. Nothing here knows JAX: it is the piece the shared adapter kit's buffered view
provides, kept apart so this adapter can switch to the kit's once it lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gradguard.kit.contract import IndexArray

__all__ = ["WorkBuffers"]

FloatArray = npt.NDArray[np.float64]


class WorkBuffers:
    """Originals and work copies of flat tensors; at most one tensor is perturbed at a time.

    Args:
        originals: Each tensor's values when the view opened, flattened (any float dtype).
        dtypes: The dtype each tensor is evaluated in (its own, or float64 for a shadow).
    """

    def __init__(self, originals: Sequence[npt.NDArray[Any]], dtypes: Sequence[np.dtype[Any]]):
        self._saved = [np.array(o, copy=True).reshape(-1) for o in originals]
        for saved in self._saved:
            saved.flags.writeable = False
        self._dtypes = list(dtypes)
        self._eval: dict[int, npt.NDArray[Any]] = {}
        self._work: dict[int, npt.NDArray[Any]] = {}
        self.dirty: int | None = None
        """The segment whose work copy differs from its original, or None."""
        self._single: int | None = None  # the one element written since clean, if only one

    def original64(self, segment: int) -> FloatArray:
        """The saved values as float64 (read-only)."""
        saved = self._saved[segment]
        if saved.dtype == np.float64:
            return saved
        return saved.astype(np.float64)

    def original_eval(self, segment: int) -> npt.NDArray[Any]:
        """The saved values in the evaluation dtype (cached, read-only)."""
        cached = self._eval.get(segment)
        if cached is None:
            cached = self._saved[segment].astype(self._dtypes[segment])
            cached.flags.writeable = False
            self._eval[segment] = cached
        return cached

    def _buffer(self, segment: int) -> npt.NDArray[Any]:
        if self.dirty is not None and self.dirty != segment:
            raise RuntimeError(
                f"segment {segment} was perturbed while segment {self.dirty} still was; "
                "a view perturbs one tensor at a time"
            )
        work = self._work.get(segment)
        if work is None:
            work = self._work[segment] = self.original_eval(segment).copy()
        self.dirty = segment
        return work

    def _clean(self) -> None:
        self.dirty = None
        self._single = None

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        """Write values (rounded to the evaluation dtype); return what was stored, as float64."""
        work = self._buffer(segment)
        self._single = -1
        if index is None:
            work[...] = values
            stored = work
        else:
            work[index] = values
            stored = work[index]
        if work.dtype == np.float64:
            return np.array(stored, dtype=np.float64, copy=True)
        return stored.astype(np.float64)

    def write_element(self, segment: int, local: int, value: float) -> float:
        """Write one element; return the stored value."""
        was_clean = self.dirty is None
        work = self._buffer(segment)
        if was_clean:
            self._single = local
        elif self._single != local:
            self._single = -1
        work[local] = value
        return float(work[local])

    def reset(self, segment: int, index: IndexArray | None) -> None:
        """Put originals back at ``index`` (``None``: the whole tensor)."""
        work = self._work.get(segment)
        if work is None:
            return
        original = self.original_eval(segment)
        if index is None:
            work[...] = original
        else:
            work[index] = original[index]
        if self.dirty == segment and (index is None or np.array_equal(work, original)):
            self._clean()

    def reset_element(self, segment: int, local: int) -> None:
        """Put one element's original back."""
        work = self._work.get(segment)
        if work is None:
            return
        original = self.original_eval(segment)
        work[local] = original[local]
        if self.dirty == segment and (self._single == local or np.array_equal(work, original)):
            self._clean()

    def current(self, segment: int) -> npt.NDArray[Any]:
        """The values the next evaluation must see for ``segment`` (flat, evaluation dtype)."""
        if self.dirty == segment:
            return self._work[segment]
        return self.original_eval(segment)
