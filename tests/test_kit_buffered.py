"""The buffered view: perturbations travel to the loss; the user's arrays are never written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradguard as gg
from gradguard.engine.layout import Layout
from gradguard.kit.buffered import BufferedView, Perturbation
from gradguard.kit.contract import scalar_loss_value


class TupleView(BufferedView):
    """The docstring's example: a loss of a tuple of arrays, perturbed by replacement."""

    adapter = "tuple"

    def __init__(
        self,
        leaves: tuple[np.ndarray[Any, Any], ...],
        loss: Callable[..., Any],
        *,
        float64: bool = False,
    ) -> None:
        super().__init__([np.array(leaf) for leaf in leaves])
        self.layout = Layout.from_tensors(
            [(f"p{i}", x.shape, x.dtype) for i, x in enumerate(self.saved)]
        )
        self._leaves = leaves
        self._loss = loss
        self._float64 = float64
        self.seen: list[Perturbation | None] = []

    def evaluation_dtype(self, segment: int) -> np.dtype[Any]:
        return np.dtype(np.float64) if self._float64 else super().evaluation_dtype(segment)

    def evaluate(self) -> float:
        leaves = list(self._leaves)
        change = self.perturbation
        self.seen.append(change)
        if change is not None:
            leaves[change.segment] = change.values.reshape(self.saved[change.segment].shape)
        return scalar_loss_value(self._loss(tuple(leaves)))

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float64) if self._float64 else self.saved[0].dtype

    def gradient(self) -> np.ndarray[Any, Any]:
        return np.concatenate([2.0 * x.reshape(-1) for x in self.saved]).astype(np.float64)


def _sum_of_squares(leaves: tuple[np.ndarray[Any, Any], ...]) -> float:
    return float(sum(np.sum(np.asarray(x, dtype=np.float64) ** 2) for x in leaves))


def _view(dtype: Any = np.float64, **kwargs: Any) -> TupleView:
    leaves = (np.arange(6, dtype=dtype).reshape(2, 3), np.array([0.5, -1.5], dtype=dtype))
    return TupleView(leaves, _sum_of_squares, **kwargs)


def test_element_write_is_a_sparse_perturbation_until_reset() -> None:
    """One written element shows as a one-position perturbation; resetting it clears it."""
    view = _view()
    assert view.perturbation is None
    stored = view.write_element(0, 4, 7.25)
    change = view.perturbation
    assert stored == 7.25 and change is not None
    assert change.segment == 0 and change.touched is not None
    assert change.touched.tolist() == [4] and change.touched_values.tolist() == [7.25]
    assert change.is_sparse() and change.values[4] == 7.25 and change.values[3] == 3.0
    view.reset_element(0, 4)
    assert view.perturbation is None


def test_whole_tensor_write_touches_everything() -> None:
    """A direction replaces the whole tensor: touched is None, never sparse."""
    view = _view()
    values = np.array([1.0, 2.0])
    assert view.write(1, None, values) is values  # float64: stored exactly as given
    change = view.perturbation
    assert change is not None and change.touched is None and not change.is_sparse()
    assert change.values.tolist() == [1.0, 2.0]
    view.reset(1, None)
    assert view.perturbation is None and view.write(1, None, values) is values


def test_index_writes_accumulate_and_partial_reset_keeps_the_rest() -> None:
    """Touched positions accumulate; a reset that leaves one perturbed keeps it reported."""
    view = _view()
    index = np.array([2, 1])
    view.write(0, index, np.array([20.0, 10.0]))
    index[:] = 0  # the caller's index array is not kept
    change = view.perturbation
    assert change is not None and change.touched is not None
    assert change.touched.tolist() == [1, 2] and change.touched_values.tolist() == [10.0, 20.0]
    view.write_element(0, 5, 50.0)
    change = view.perturbation
    assert change is not None and change.touched is not None
    assert change.touched.tolist() == [1, 2, 5]
    view.reset(0, np.array([1, 2]))
    change = view.perturbation
    assert change is not None and change.values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 50.0]
    view.reset(0, np.array([1, 2, 5]))
    assert view.perturbation is None


def test_values_are_rounded_to_the_evaluation_dtype() -> None:
    """A float32 tensor stores float32 values (returned as float64); float64 evaluation is exact."""
    view = _view(np.float32)
    stored = view.write_element(0, 1, 1.0 + 1e-12)
    assert stored == 1.0
    lifted = _view(np.float32, float64=True)
    assert lifted.write_element(0, 1, 1.0 + 1e-12) == 1.0 + 1e-12
    assert lifted.original(0).dtype == np.float64


def test_one_perturbed_tensor_at_a_time() -> None:
    """Writing a second tensor while the first is perturbed is a call-order error."""
    view = _view()
    view.write_element(0, 0, 3.0)
    with pytest.raises(RuntimeError, match="one perturbed tensor at a time"):
        view.write_element(1, 0, 3.0)
    view.reset_element(0, 0)
    view.write_element(1, 0, 3.0)  # allowed once the first is back


def test_originals_are_read_only_and_callers_arrays_untouched() -> None:
    """The saved originals cannot be scribbled on; the caller's arrays keep their flags."""
    leaf = np.ones(3)
    view = TupleView((leaf,), _sum_of_squares)
    assert leaf.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view.original(0)[0] = 5.0
    view.write(0, None, np.zeros(3))
    view.restore()
    assert view.perturbation is None and leaf.tolist() == [1.0, 1.0, 1.0]


def test_a_zero_dimensional_tensor_keeps_its_shape() -> None:
    """A 0-d tensor (a scalar parameter) is saved 0-d, not turned 1-d, and round-trips."""
    view = TupleView((np.array(2.0),), _sum_of_squares)
    assert view.saved[0].shape == ()
    assert view.write_element(0, 0, 3.0) == 3.0
    assert view.evaluate() == 9.0
    view.reset_element(0, 0)
    assert view.evaluate() == 4.0 and view.perturbation is None


class _Box:
    def __init__(self, *leaves: np.ndarray[Any, Any]) -> None:
        self.leaves = leaves


class _BoxAdapter(gg.Adapter):
    name = "tuple"

    def open(self, params: Any, loss: Callable[..., Any], grad: Any) -> gg.FlatView:
        return TupleView(params.leaves, lambda leaves: loss(_Box(*leaves)))


class _BoxPlugin:
    @gg.hookimpl
    def gradguard_adapter_claim(self, params: object) -> gg.Adapter | None:
        return _BoxAdapter() if isinstance(params, _Box) else None


def test_a_check_through_a_buffered_view() -> None:
    """The engine drives a buffered view like any other: a right gradient passes."""
    gg.register(_BoxPlugin(), name="test-buffered")
    try:
        box = _Box(np.linspace(-1.0, 1.0, 6).reshape(2, 3), np.array([0.5, 2.0]))
        report = gg.check(lambda b: _sum_of_squares(b.leaves), box, seed=1)
    finally:
        gg.unregister("test-buffered")
    assert report.passed and report.adapter == "tuple"
    assert [p.name for p in report.params] == ["p0", "p1"]
