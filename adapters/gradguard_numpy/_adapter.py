"""The NumPy adapter: ndarrays, NumPy and Python scalars, nested in dicts, lists and tuples."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout
from gradguard.engine.numerics import SUPPORTED_DTYPES
from gradguard.errors import GradientError, InvalidParamsError, SettingsError
from gradguard.kit.contract import Adapter, FlatView, IndexArray, scalar_loss_value
from gradguard.kit.dtypes import float64_flat, least_precise
from gradguard.kit.gradients import flatten_gradient
from gradguard.kit.memory import numpy_extent, refuse_shared
from gradguard.kit.tree import (
    Path,
    holds_only,
    path_name,
    rebuild,
    refuse_duplicate_names,
    walk,
    walk_like,
)

__all__ = ["NumpyAdapter", "NumpyView", "is_numpy_tree"]

FloatArray = npt.NDArray[np.float64]
_LEAF_TYPES = (np.ndarray, np.generic, numbers.Number)


def _is_leaf(obj: object) -> bool:
    return isinstance(obj, _LEAF_TYPES)


def is_numpy_tree(obj: object) -> bool:
    """Whether ``obj`` is an array, a number, or dicts/lists/tuples holding only those."""
    return holds_only(obj, _is_leaf)


class _Leaf:
    """One parameter tensor: the array the loss sees, and how to present it."""

    def __init__(self, path: Path, value: Any) -> None:
        self.path = path
        self.name = path_name(path)
        name = self.name
        self.scalar_type: type | None = None
        if isinstance(value, bool | np.bool_):
            raise InvalidParamsError(
                f"parameter {name!r} is a bool; only float parameters can be checked"
            )
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, np.generic):
            array = np.array(value)
            self.scalar_type = type(value)
        elif isinstance(value, numbers.Real):
            if isinstance(value, numbers.Integral):
                raise InvalidParamsError(
                    f"parameter {name!r} is the integer {value!r}; gradients need floats "
                    f"(write {float(value)!r})"
                )
            array = np.array(float(value), dtype=np.float64)
            self.scalar_type = np.float64
        else:
            raise InvalidParamsError(
                f"parameter {name!r} is a {type(value).__name__}, which the NumPy adapter "
                "cannot check (complex numbers, objects)"
            )
        if array.dtype not in SUPPORTED_DTYPES:
            kind = "integer" if np.issubdtype(array.dtype, np.integer) else str(array.dtype)
            if array.dtype == np.bool_:
                kind = "bool"
            raise InvalidParamsError(
                f"parameter {name!r} (shape {array.shape}) has {kind} dtype {array.dtype}; "
                "only float16, float32 and float64 tensors can be checked: cast it, e.g. "
                f"params[...] = value.astype(np.float64), or leave it out of params"
            )
        # The user's own array is perturbed in place when NumPy allows it, so a loss that
        # reads the arrays through a closure sees the perturbation too; otherwise a private
        # copy is perturbed and handed to the loss.
        self.in_place = self.scalar_type is None and array.flags.writeable
        self.array: np.ndarray[Any, Any] = array if self.in_place else array.copy()
        self.flat = self.array.reshape(-1) if self.array.flags.c_contiguous else None
        self.saved = np.array(self.array, copy=True)
        self.saved_flat = self.saved.reshape(-1)

    def present(self) -> Any:
        """The value the loss receives for this leaf."""
        if self.scalar_type is not None:
            return self.scalar_type(self.array[()])
        return self.array

    def set(self, index: IndexArray | None, values: FloatArray) -> None:
        if self.flat is not None:
            if index is None:
                self.flat[...] = values
            else:
                self.flat[index] = values
        else:  # a non-contiguous view of the user's array: go through multi-indices
            target = np.unravel_index(
                np.arange(self.array.size) if index is None else index, self.array.shape
            )
            self.array[target] = values

    def get(self, index: IndexArray | None) -> np.ndarray[Any, Any]:
        flat = self.array.reshape(-1)  # a copy only for non-contiguous arrays
        return flat if index is None else flat[index]

    def reset(self, index: IndexArray | None) -> None:
        saved = self.saved.reshape(-1)
        self.set(index, saved if index is None else saved[index])

    def restore(self) -> None:
        np.copyto(self.array, self.saved)


class NumpyView(FlatView):
    """A flat view over NumPy parameters; evaluations replay NumPy's global random state."""

    adapter = "numpy"
    joint_writes = True  # each tensor is written in place, independently of the others

    def __init__(self, params: Any, loss: Callable[..., Any], grad: Any) -> None:
        self._template = params
        walked = list(walk(params, ()))
        leaves = [_Leaf(path, value) for path, value in walked]
        self._leaves = [leaf for leaf in leaves if leaf.array.size > 0]
        if not self._leaves:
            raise InvalidParamsError(
                "params is empty: there is no parameter to check (pass the arrays the loss "
                "depends on, e.g. {'W': W, 'b': b})"
            )
        refuse_duplicate_names(leaf.path for leaf in self._leaves)
        own = [leaf.array for leaf in self._leaves if leaf.in_place]  # others are copies
        refuse_shared(
            [(leaf.name, numpy_extent(leaf.array)) for leaf in self._leaves if leaf.in_place],
            lambda i, j: bool(np.shares_memory(own[i], own[j])),
        )
        self._by_path = {leaf.path: leaf for leaf in self._leaves}
        # What the loss receives in place of each leaf: the live leaf, or the caller's
        # own (empty) value that is not checked.
        self._slots = [(self._by_path.get(path), value) for path, value in walked]
        self.layout = Layout.from_tensors(
            [(leaf.name, leaf.array.shape, leaf.array.dtype) for leaf in self._leaves]
        )
        self._loss = loss
        self._grad = grad
        self._rebuilds = any(not leaf.in_place for leaf in self._leaves)
        self._loss_dtype = least_precise(*(leaf.array.dtype for leaf in self._leaves))
        self._random_state = np.random.get_state()
        # Replaying the global random state costs ~30 us per evaluation (as much as a small
        # forward pass), so it is switched on only once a call is seen to draw from it.
        self._replay = False
        self._watch = {"loss": True, "grad": True, "hvp": True}
        self._hvp: Callable[..., Any] | None = None

    # -- what the loss sees --------------------------------------------------------------

    def _presented(self) -> Any:
        if not self._rebuilds:
            return self._template
        values = (value if leaf is None else leaf.present() for leaf, value in self._slots)
        return rebuild(self._template, values)

    def _call(self, function: Callable[..., Any], kind: str) -> Any:
        # Every evaluation sees the same global random stream (dropout written with
        # np.random), and the caller's stream is put back when the view closes.
        if self._replay:
            np.random.set_state(self._random_state)
        result = function(self._presented())
        if self._watch[kind]:
            self._watch[kind] = False
            if not _same_state(np.random.get_state(), self._random_state):
                self._replay = True
        return result

    # -- FlatView ------------------------------------------------------------------------

    def original(self, segment: int) -> FloatArray:
        return float64_flat(self._leaves[segment].saved)

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        leaf = self._leaves[segment]
        leaf.set(index, values)
        if leaf.array.dtype == np.float64:
            return values
        return leaf.get(index).astype(np.float64)

    def reset(self, segment: int, index: IndexArray | None) -> None:
        self._leaves[segment].reset(index)

    def write_element(self, segment: int, local: int, value: float) -> float:
        leaf = self._leaves[segment]
        if leaf.flat is None:
            return super().write_element(segment, local, value)
        leaf.flat[local] = value
        return float(leaf.flat[local])

    def reset_element(self, segment: int, local: int) -> None:
        leaf = self._leaves[segment]
        if leaf.flat is None:
            super().reset_element(segment, local)
        else:
            leaf.flat[local] = leaf.saved_flat[local]

    def evaluate(self) -> float:
        value = self._call(self._loss, "loss")
        result = scalar_loss_value(value)
        dtype = getattr(value, "dtype", None)
        if dtype is not None and dtype in SUPPORTED_DTYPES:
            # The loss is only as precise as its least precise input or its own result.
            self._loss_dtype = least_precise(self._loss_dtype, dtype)
        return result

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._loss_dtype

    def gradient(self) -> FloatArray:
        if self._grad is None:
            raise GradientError(
                "the NumPy adapter has no autodiff: pass the analytic gradient, "
                "check(loss, params, grad) with grad(params) returning the same structure "
                "as params (or the gradient structure itself)"
            )
        grad = self._call(self._grad, "grad") if callable(self._grad) else self._grad
        by_path = dict(walk_like(self._template, grad))
        leaves = [by_path[leaf.path] for leaf in self._leaves]  # empty arrays are not checked
        return flatten_gradient(self.layout, leaves)

    # -- second order (check(..., order=2, hvp=...)) --------------------------------------

    def use_hvp(self, function: Callable[..., Any]) -> None:
        self._hvp = function

    def gradient_at(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        if not callable(self._grad):
            raise SettingsError(
                "order=2 on NumPy params differentiates grad(params): pass grad as a callable "
                "returning the gradient at the params it receives, not a fixed gradient"
            )
        taken = np.zeros_like(displacement)
        try:
            for segment, leaf in zip(self.layout, self._leaves, strict=True):
                part = displacement[segment.offset : segment.stop]
                if not part.any():
                    continue
                original = leaf.saved_flat.astype(np.float64)
                leaf.set(None, original + part)
                stored = leaf.get(None).astype(np.float64)
                taken[segment.offset : segment.stop] = stored - original
            return self.gradient(), taken
        finally:
            for leaf in self._leaves:
                leaf.reset(None)

    def hvp(self, vector: FloatArray) -> FloatArray:
        function = self._hvp
        if function is None:
            raise SettingsError(
                "the NumPy adapter has no autodiff to compute Hessian-vector products: pass "
                "hvp=lambda params, v: ... (H v in params' structure) with order=2"
            )
        parts = iter(
            vector[segment.offset : segment.stop].reshape(segment.shape) for segment in self.layout
        )
        v = rebuild(
            self._template, (value if leaf is None else next(parts) for leaf, value in self._slots)
        )
        result = self._call(lambda params: function(params, v), "hvp")
        by_path = dict(walk_like(self._template, result))
        leaves = [by_path[leaf.path] for leaf in self._leaves]
        return flatten_gradient(self.layout, leaves, source="hvp")

    def drifted(self) -> list[int]:
        return [
            s
            for s, leaf in enumerate(self._leaves)
            if leaf.array.tobytes() != leaf.saved.tobytes()  # bits: NaN and -0.0 count
        ]

    def restore(self) -> None:
        for leaf in self._leaves:
            leaf.restore()
        np.random.set_state(self._random_state)


def _same_state(a: Any, b: Any) -> bool:
    """Whether two ``np.random.get_state()`` tuples are the same state."""
    return bool(a[2:] == b[2:] and np.array_equal(a[1], b[1]))


class NumpyAdapter(Adapter):
    """Claims NumPy arrays and scalars, and dicts, lists and tuples of them."""

    name: ClassVar[str] = "numpy"
    autodiff: ClassVar[bool] = False
    numpy_loss: ClassVar[bool] = True  # NumPy's BLAS threads are the loss's: left alone

    def open(self, params: Any, loss: Callable[..., Any], grad: Any) -> FlatView:
        return NumpyView(params, loss, grad)
