"""A flat view for frameworks whose arrays cannot be written in place (TensorFlow, JAX).

NumPy and PyTorch let a view write a perturbed value straight into the user's tensor.
TensorFlow's tensors and JAX's arrays are immutable, and writing into a ``tf.Variable`` has
costs of its own (a sparse write switches it to copy-on-read for the rest of training). There
the perturbation has to travel *to* the loss instead: the view keeps a private working copy of
the perturbed tensor, and each evaluation hands the framework either the few changed elements
(a coordinate probe) or the whole working copy (a direction).

:class:`BufferedView` does that bookkeeping once for every such adapter. A subclass supplies
the framework part: the layout, :meth:`~gradguard.kit.contract.FlatView.evaluate` (which reads
:attr:`BufferedView.perturbation`), ``loss_dtype``, ``gradient`` and, when it holds state of its
own, ``restore``. A minimal JAX-style subclass::

    class MyView(BufferedView):
        adapter = "mine"

        def __init__(self, leaves, loss):
            super().__init__([np.asarray(leaf) for leaf in leaves])  # private copies
            self.layout = Layout.from_tensors(
                [(f"p{i}", x.shape, x.dtype) for i, x in enumerate(self.saved)]
            )
            self._leaves, self._loss = list(leaves), loss

        def evaluate(self):
            leaves = list(self._leaves)
            change = self.perturbation  # None: every tensor at its original value
            if change is not None:
                flat = change.values  # the whole tensor, flat, in its evaluation dtype
                leaves[change.segment] = flat.reshape(self.saved[change.segment].shape)
            return scalar_loss_value(self._loss(leaves))

A compiled evaluation would instead pass ``(change.segment, change.touched,
change.touched_values)`` when ``change.is_sparse()`` (one element and its value, cheap to
transfer), and ``change.values`` otherwise.

The engine perturbs one tensor at a time (the call order in :mod:`gradguard.kit.contract`),
and a buffered view enforces it, unless the subclass sets
:attr:`~gradguard.kit.contract.FlatView.joint_writes`: then any number of tensors may be
perturbed at once (joint screening writes whole tensors, several or all of them), and
``evaluate`` reads :attr:`BufferedView.perturbations`, one :class:`Perturbation` per changed
tensor, instead. Such an evaluation hands the loss every perturbed tensor::

    def evaluate(self):
        leaves = list(self._leaves)
        for change in self.perturbations:  # () when nothing is perturbed
            leaves[change.segment] = change.values.reshape(self.saved[change.segment].shape)
        return scalar_loss_value(self._loss(leaves))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from gradguard.kit.contract import FlatView, FloatArray, IndexArray

__all__ = ["SPARSE_FRACTION", "BufferedView", "Perturbation"]

SPARSE_FRACTION = 0.25
"""A perturbation touching at most this fraction of a tensor counts as sparse: sending the
touched positions and their values is then cheaper than sending the whole tensor."""


@attrs.frozen
class Perturbation:
    """A tensor that differs from its original values right now, and where.

    Attributes:
        segment: The tensor's position in the layout.
        values: The whole tensor as the next evaluation must see it, flat, in its evaluation
            dtype (the view's working buffer: read it, never write it, never keep it).
        touched: The flat positions that may differ from the original (sorted, distinct),
            or ``None`` when any position may (a whole-tensor write).
    """

    segment: int
    values: npt.NDArray[Any]
    touched: IndexArray | None

    def is_sparse(self, fraction: float = SPARSE_FRACTION) -> bool:
        """Whether few enough positions changed to send them rather than the whole tensor."""
        return self.touched is not None and self.touched.size <= fraction * self.values.size

    @property
    def touched_values(self) -> npt.NDArray[Any]:
        """The values at :attr:`touched` (all values when every position may differ)."""
        return self.values if self.touched is None else self.values[self.touched]


class BufferedView(FlatView):
    """A :class:`~gradguard.kit.contract.FlatView` that never writes the user's arrays.

    Implements ``original``, ``write``, ``reset``, ``write_element`` and ``reset_element`` on
    private working copies; the subclass's ``evaluate`` reads :attr:`perturbation`.

    Args:
        saved: Each checked tensor's values when the view opened, in layout order, in its
            own dtype and shape. The view keeps them (read-only) as the originals:
            pass private copies, not arrays the loss could change.
    """

    def __init__(self, saved: Sequence[npt.NDArray[Any]]) -> None:
        self.saved: list[npt.NDArray[Any]] = []
        for array in saved:
            # A read-only view: the originals are what restoration trusts, and the caller's
            # own array keeps its flags.
            # (np.ascontiguousarray makes a 0-d array 1-d: the shape is put back.)
            original = np.ascontiguousarray(array).reshape(np.shape(array))
            original.flags.writeable = False
            self.saved.append(original)
        self._originals: dict[int, npt.NDArray[Any]] = {}
        self._work: dict[int, npt.NDArray[Any]] = {}
        # The perturbed tensors and, per tensor, the flat positions that may differ from the
        # original (None: any position; a whole-tensor write).
        self._dirty: dict[int, IndexArray | None] = {}

    # -- for the subclass -----------------------------------------------------------------

    def evaluation_dtype(self, segment: int) -> np.dtype[Any]:
        """The dtype a tensor is evaluated in; written values are rounded to it.

        Default: the tensor's own dtype. A view that evaluates a float32 model in float64
        overrides it. Asked once per tensor, at its first write.
        """
        return self.saved[segment].dtype

    @property
    def perturbation(self) -> Perturbation | None:
        """What the next evaluation must see changed, or ``None``: every tensor as it was.

        For a view that perturbs one tensor at a time. With several tensors perturbed at once
        (a view with ``joint_writes``) read :attr:`perturbations`.

        Raises:
            RuntimeError: more than one tensor is perturbed.
        """
        if not self._dirty:
            return None
        if len(self._dirty) > 1:
            raise RuntimeError(
                f"{len(self._dirty)} tensors are perturbed at once; a view with joint_writes "
                "reads BufferedView.perturbations, not .perturbation"
            )
        ((segment, touched),) = self._dirty.items()
        return Perturbation(segment, self._work[segment], touched)

    @property
    def perturbations(self) -> tuple[Perturbation, ...]:
        """Every tensor the next evaluation must see changed, in layout order (``()``: none)."""
        dirty = self._dirty
        if len(dirty) == 1:
            ((segment, touched),) = dirty.items()
            return (Perturbation(segment, self._work[segment], touched),)
        return tuple(Perturbation(s, self._work[s], dirty[s]) for s in sorted(dirty))

    def discard_buffers(self) -> None:
        """Drop the working copies: every tensor reads as its original again."""
        self._work.clear()
        self._originals.clear()
        self._dirty.clear()

    # -- FlatView -------------------------------------------------------------------------

    def original(self, segment: int) -> FloatArray:
        saved = self.saved[segment].reshape(-1)
        if saved.dtype == np.float64:
            return saved  # read-only already
        return saved.astype(np.float64)

    def _start(self, segment: int) -> npt.NDArray[Any]:
        """The original values in the evaluation dtype, flat, read-only (cached)."""
        cached = self._originals.get(segment)
        if cached is None:
            dtype = self.evaluation_dtype(segment)
            cached = self.saved[segment].reshape(-1).astype(dtype)
            cached.flags.writeable = False
            self._originals[segment] = cached
        return cached

    def _buffer(self, segment: int) -> npt.NDArray[Any]:
        """The tensor's working copy, for a write; refuses a second perturbed tensor unless
        the view writes jointly."""
        if self._dirty and segment not in self._dirty and not self.joint_writes:
            other = next(iter(self._dirty))
            raise RuntimeError(
                f"{self.layout[segment].name!r} was written while "
                f"{self.layout[other].name!r} was still perturbed; the FlatView call "
                "order allows one perturbed tensor at a time (reset it first)"
            )
        work = self._work.get(segment)
        if work is None:
            work = self._work[segment] = self._start(segment).copy()
        return work

    def _mark(self, segment: int, index: IndexArray | None) -> None:
        """Record that ``index`` of ``segment`` (``None``: all of it) may now differ."""
        if index is None:
            self._dirty[segment] = None
        elif segment not in self._dirty:
            self._dirty[segment] = np.unique(index)  # a private copy, sorted and distinct
        else:
            touched = self._dirty[segment]
            if touched is not None and not _covers(touched, index):
                self._dirty[segment] = np.union1d(touched, index)

    def _unmark(self, segment: int, index: IndexArray | None) -> None:
        """After a reset of ``index``: clean again if it covered every touched position."""
        if segment not in self._dirty:
            return
        touched = self._dirty[segment]
        if index is None or (touched is not None and _covers(index, touched)):
            del self._dirty[segment]

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        work = self._buffer(segment)
        if index is None:
            work[...] = values
        else:
            index = np.asarray(index, dtype=np.intp).reshape(-1)
            work[index] = values
        self._mark(segment, index)
        if work.dtype == np.float64:  # stored exactly as given
            return values
        stored = work if index is None else work[index]
        return stored.astype(np.float64)

    def reset(self, segment: int, index: IndexArray | None) -> None:
        work = self._work.get(segment)
        if work is None:  # never written
            return
        start = self._start(segment)
        if index is None:
            work[...] = start
        else:
            index = np.asarray(index, dtype=np.intp).reshape(-1)
            work[index] = start[index]
        self._unmark(segment, index)

    def write_element(self, segment: int, local: int, value: float) -> float:
        work = self._buffer(segment)
        work[local] = value
        if segment not in self._dirty:
            self._dirty[segment] = np.array([local], dtype=np.intp)
        else:
            self._mark(segment, np.array([local], dtype=np.intp))
        return float(work[local])

    def reset_element(self, segment: int, local: int) -> None:
        work = self._work.get(segment)
        if work is None:
            return
        work[local] = self._start(segment)[local]
        self._unmark(segment, np.array([local], dtype=np.intp))

    def restore(self) -> None:
        """Nothing of the user's was written: drop the working copies.

        A subclass with state of its own (variables the loss writes, a global mode it set)
        overrides this and calls ``super().restore()``.
        """
        self.discard_buffers()


def _covers(index: npt.NDArray[Any], positions: npt.NDArray[Any]) -> bool:
    """Whether ``index`` holds every one of ``positions`` (fast for the usual single one)."""
    if index.size == 1 and positions.size == 1:
        return bool(index.reshape(-1)[0] == positions.reshape(-1)[0])
    return bool(np.isin(positions, index).all())
