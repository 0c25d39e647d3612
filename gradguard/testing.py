"""The adapter conformance suite: the same tests over every adapter, a third party's included.

An adapter passes when a tiny model of its framework goes through the call order written down
in :mod:`gradguard.kit.contract`, a right gradient passes, a wrong one fails naming the tensor,
bad input gets the right :class:`~gradguard.errors.GradGuardError`, and the params are
bit-identical afterwards whatever happened. gradguard runs it for NumPy, PyTorch,
TensorFlow and JAX (``tests/test_conformance_*.py``); an adapter's author runs it the same way, in
pytest (which this module needs)::

    from gradguard.testing import AdapterConformance, ConformanceCase

    class TestMyAdapter(AdapterConformance):
        case = ConformanceCase(
            adapter="mine",
            make=lambda: MyModel(seed=0),              # fresh params for every test
            loss=lambda m: m(X).square().mean(),
            grad=None,                                 # the adapter's autodiff
            wrong_grad=lambda m: {**true_grad(m), "w": 2 * true_grad(m)["w"]},
            wrong_tensor="w",
            snapshot=lambda m: [np.asarray(v) for v in m.state()],
            vector_loss=lambda m: m(X),                # not reduced to a scalar
            misshapen_grad=lambda m: {**true_grad(m), "w": np.zeros(7)},
            nan_grad=lambda m: {**true_grad(m), "w": np.full_like(true_grad(m)["w"], np.nan)},
            shared=lambda: [w := make_tensor(), w],    # the same tensor twice
        )
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt
import pytest

from gradguard.api import check, find_adapter
from gradguard.engine.numerics import SUPPORTED_DTYPES
from gradguard.errors import GradientError, InvalidParamsError, LossError
from gradguard.kit.contract import FlatView

__all__ = ["AdapterConformance", "ConformanceCase"]

Snapshot = list[npt.NDArray[Any]]


@attrs.frozen
class ConformanceCase:
    """A tiny model of one framework, and the ways to get it wrong.

    Attributes:
        adapter: The name the adapter reports (``report.adapter``).
        make: Builds fresh params (a model, a container of tensors) with fixed values.
        loss: ``loss(params)``: a scalar that depends on every tensor.
        grad: The right gradient as the adapter accepts it (``grad(params)``), or ``None``
            for the adapter's own autodiff.
        wrong_grad: A gradient, in the form the adapter accepts, that is right for every
            tensor but :attr:`wrong_tensor` (doubled there, say).
        wrong_tensor: The name of the tensor :attr:`wrong_grad` gets wrong, as reported.
        snapshot: Every value a check must leave bit-identical (parameters, buffers, RNG
            states), as NumPy arrays.
        vector_loss: A loss that returns a non-scalar (a LossError).
        misshapen_grad: A gradient whose :attr:`wrong_tensor` has another shape.
        nan_grad: A gradient whose :attr:`wrong_tensor` holds a NaN.
        shared: Builds params that hold one tensor twice, or ``None`` where the framework
            cannot express that.
    """

    adapter: str
    make: Callable[[], Any]
    loss: Callable[[Any], Any]
    grad: Callable[[Any], Any] | None
    wrong_grad: Callable[[Any], Any]
    wrong_tensor: str
    snapshot: Callable[[Any], Snapshot]
    vector_loss: Callable[[Any], Any]
    misshapen_grad: Callable[[Any], Any]
    nan_grad: Callable[[Any], Any]
    shared: Callable[[], Any] | None = None


def _same(before: Snapshot, after: Snapshot) -> bool:
    return len(before) == len(after) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        for a, b in zip(before, after, strict=True)
    )


class _Interrupt(BaseException):
    """Stands for a Ctrl-C in the middle of a probe (not an Exception, like KeyboardInterrupt)."""


class AdapterConformance:
    """Subclass it as ``Test...`` with a :class:`ConformanceCase` as ``case``; pytest runs
    every ``test_`` method below against that adapter."""

    case: ClassVar[ConformanceCase]

    # -- helpers --------------------------------------------------------------------------

    def _params(self) -> tuple[Any, Snapshot]:
        params = self.case.make()
        return params, self.case.snapshot(params)

    def _assert_unchanged(self, params: Any, before: Snapshot) -> None:
        assert _same(before, self.case.snapshot(params)), "the params changed"

    def _open(self, params: Any) -> FlatView:
        return find_adapter(params).open(params, self.case.loss, self.case.grad)

    # -- claims and verdicts --------------------------------------------------------------

    def test_the_adapter_claims_its_params(self) -> None:
        """The plugin manager hands these params to the adapter under test."""
        params, _ = self._params()
        assert find_adapter(params).name == self.case.adapter

    def test_a_right_gradient_passes_and_leaves_params_identical(self) -> None:
        """Every tensor passes with the right gradient; the params are bit-identical after."""
        params, before = self._params()
        report = check(self.case.loss, params, self.case.grad, seed=0)
        assert report.adapter == self.case.adapter
        assert report.passed, str(report)
        assert all(p.status.passed for p in report.params)
        self._assert_unchanged(params, before)

    def test_a_wrong_gradient_fails_naming_the_tensor(self) -> None:
        """The wrong tensor, and only it, fails; the params are bit-identical after."""
        params, before = self._params()
        report = check(self.case.loss, params, self.case.wrong_grad, seed=0)
        assert not report.passed
        assert report.failed == (self.case.wrong_tensor,), str(report)
        self._assert_unchanged(params, before)

    # -- the call order -------------------------------------------------------------------

    def test_the_call_order_of_the_contract(self) -> None:
        """Driven step by step as the contract says, the view reads, perturbs, evaluates,
        puts back exactly, and leaves the params as they were."""
        params, before = self._params()
        with self._open(params) as view:
            layout = view.layout
            assert len(layout) > 0 and layout.size > 0
            originals = [np.array(view.original(s)) for s in range(len(layout))]
            assert all(
                o.dtype == np.float64 and o.size == seg.size
                for o, seg in zip(originals, layout, strict=True)
            )
            first = view.evaluate()
            assert isinstance(first, float) and math.isfinite(first)
            dtype = view.loss_dtype
            assert dtype in SUPPORTED_DTYPES
            gradient = view.gradient()
            assert gradient.dtype == np.float64 and gradient.shape == (layout.size,)
            assert view.evaluate() == first
            # The element with the largest gradient: moving it must move the loss.
            s = max(
                range(len(layout)),
                key=lambda t: float(np.max(np.abs(gradient[layout[t].offset : layout[t].stop]))),
            )
            local = int(np.argmax(np.abs(gradient[layout[s].offset : layout[s].stop])))
            stored = view.write_element(s, local, originals[s][local] + 0.5)
            assert isinstance(stored, float) and stored != originals[s][local]
            assert view.evaluate() != first
            view.reset_element(s, local)
            assert view.evaluate() == first
            whole = view.write(s, None, originals[s] + 0.25)
            assert whole.dtype == np.float64 and whole.shape == (layout[s].size,)
            assert view.evaluate() != first
            view.reset(s, None)
            assert view.evaluate() == first
            assert view.loss_dtype == dtype
            for value in view.notes.values():
                assert value is None or isinstance(value, str | int | float | bool)
        self._assert_unchanged(params, before)

    def test_an_interrupt_in_the_middle_of_a_probe_leaves_params_identical(self) -> None:
        """Leaving the view while a tensor is perturbed (a Ctrl-C) restores it exactly."""
        params, before = self._params()
        with pytest.raises(_Interrupt), self._open(params) as view:
            view.evaluate()
            view.gradient()
            view.write(0, None, np.array(view.original(0)) + 1.0)
            view.evaluate()
            raise _Interrupt
        self._assert_unchanged(params, before)

    def test_a_failing_loss_propagates_and_leaves_params_identical(self) -> None:
        """The user's own exception from the loss reaches the caller unchanged."""
        params, before = self._params()

        def broken(p: Any) -> Any:
            raise ValueError("boom from the user's loss")

        with pytest.raises(ValueError, match="boom from the user's loss"):
            check(broken, params, self.case.grad, seed=0)
        self._assert_unchanged(params, before)

    # -- bad input ------------------------------------------------------------------------

    def test_a_non_scalar_loss_is_a_loss_error(self) -> None:
        """A loss that is not reduced to a scalar is refused, and nothing changes."""
        params, before = self._params()
        with pytest.raises(LossError, match="scalar"):
            check(self.case.vector_loss, params, self.case.grad, seed=0)
        self._assert_unchanged(params, before)

    def test_a_misshapen_gradient_is_a_gradient_error_naming_the_tensor(self) -> None:
        """A gradient of the wrong shape names the tensor and both shapes."""
        params, before = self._params()
        with pytest.raises(GradientError, match="has shape") as caught:
            check(self.case.loss, params, self.case.misshapen_grad, seed=0)
        assert repr(self.case.wrong_tensor) in str(caught.value)
        self._assert_unchanged(params, before)

    def test_a_non_finite_gradient_is_a_gradient_error_naming_the_tensor(self) -> None:
        """A NaN in the gradient names the tensor and the first bad element."""
        params, before = self._params()
        with pytest.raises(GradientError, match="non-finite") as caught:
            check(self.case.loss, params, self.case.nan_grad, seed=0)
        assert repr(self.case.wrong_tensor) in str(caught.value)
        self._assert_unchanged(params, before)

    def test_one_tensor_given_twice_is_refused(self) -> None:
        """Params holding one tensor twice are refused with the kit's one message."""
        if self.case.shared is None:
            pytest.skip("this framework cannot hold one tensor twice")
        with pytest.raises(InvalidParamsError, match="share memory"):
            check(self.case.loss, self.case.shared(), None, seed=0)
