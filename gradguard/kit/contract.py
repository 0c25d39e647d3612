"""The contract between the engine and a framework adapter.

An adapter plugin answers the ``gradguard_adapter_claim`` hook with an :class:`Adapter` for the
params containers it understands. :meth:`Adapter.open` returns a :class:`FlatView`: the
engine's only window onto the user's parameters. The engine reads original values, writes
perturbed values at flat positions of one tensor at a time, evaluates the loss, asks for the
analytic gradient, and puts values back; it never sees a framework object.

A view is a context manager, and leaving it, normally or by any exception including
``KeyboardInterrupt``, must leave every parameter bit-identical to what it was (write the
saved originals back; never subtract the step).

The call order
--------------

The engine calls a view in this order, and an adapter may rely on it (the conformance suite,
:mod:`gradguard.testing`, drives every adapter through it):

1. ``Adapter.open(params, loss, grad)`` validates everything it can and modifies nothing.
2. ``layout``, then ``original(s)`` for every tensor, before any evaluation.
3. ``evaluate()`` at the original values, before any write: the first evaluation. An adapter
   may compute the analytic gradient along with it (PyTorch does), and may decide here how
   it evaluates (a float64 shadow, a compiled trace) as long as it is decided before:
4. ``loss_dtype``, read after the first evaluation; it sets the step and the tolerance, so it
   must not change afterwards.
5. ``gradient()``, once, with every tensor at its original values; then ``gradient_dtype``
   (by default ``loss_dtype``), which widens the tolerance for a less precise gradient, and
   ``gradient_spread()`` (by default ``None``), a measured sample of that gradient's round-off.
6. ``evaluate()`` again at the original values (the determinism check), then ``drifted()``.
7. Probes, one tensor at a time: ``write`` / ``write_element`` on tensor ``s``, then
   ``evaluate()``, possibly more writes to the same tensor and evaluations, then ``reset`` /
   ``reset_element`` of every position written, before any other tensor is written. At most
   one tensor differs from its original values at any evaluation, unless the view sets
   :attr:`FlatView.joint_writes`: then a joint probe writes whole tensors (``index=None``),
   several or all of them, evaluates, writes them again, evaluates, and resets each one.
8. ``notes``, read once, after the last evaluation.
9. ``restore()`` through ``__exit__``: always, also when any step above raised, possibly in
   the middle of a probe (a tensor still perturbed).

A view that sets :attr:`FlatView.partitioned` (no process holds whole tensors: each rank of a
sharded model holds a shard) is never asked for ``original(s)`` in step 2 nor for
``gradient()`` in step 5: the engine asks it for reductions instead (``original_summary`` in
step 2, ``gradient_summary`` in step 5, then ``element``, ``write_along`` and
``gradient_along`` for probes, ``gradient_dots``, ``gradient_dot``, ``gradient_elements``,
``nonzero_positions`` and ``largest_gradient_outside`` as the check needs them), in the same
order on every process, so each may be collective. Joint screening goes through the same
reductions: its probe is ``write_along(+step)`` for every tensor of the probe, an evaluation,
``write_along(-step)`` for each, an evaluation, ``reset`` and ``gradient_along`` for each; its
candidate directions are one ``gradient_dots`` call. The defaults below compute every reduction
from ``original`` and ``gradient``, so an ordinary view needs none of them.

A view may raise :class:`~gradguard.errors.GradGuardError` subclasses from any step
(``InvalidParamsError`` from ``open``, ``LossError`` from ``evaluate``, ``GradientError``
from ``gradient``); the user's own exceptions from the loss propagate unchanged.
"""

from __future__ import annotations

import abc
import types
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gradguard.engine.directions import Direction
from gradguard.engine.layout import Layout
from gradguard.engine.values import DenseValues
from gradguard.errors import LossError, SettingsError
from gradguard.kit.locks import default_keys
from gradguard.kit.validate import check_loss_value

__all__ = [
    "DERIVATIVE_METHODS",
    "Adapter",
    "FlatView",
    "FloatArray",
    "IndexArray",
    "require_methods",
    "scalar_loss_value",
]

IndexArray = npt.NDArray[np.intp]
"""Flat positions inside one tensor."""

FloatArray = npt.NDArray[np.float64]
"""A flat float64 vector (an original, a gradient, stored values)."""


class FlatView(abc.ABC):
    """A checkable, restorable flat view of one params container.

    Attributes:
        layout: The named tensors, in flat order.
        adapter: The name of the adapter that made the view (recorded in reports).
    """

    layout: Layout
    adapter: str
    joint_writes: ClassVar[bool] = False
    """Whether several tensors may differ from their originals at one evaluation.

    The engine's screening strategy perturbs every tensor at once; a view that can hold only
    one perturbed tensor at a time (a buffered view over immutable arrays) leaves this
    ``False`` and is checked tensor by tensor.
    """
    partitioned: ClassVar[bool] = False
    """Whether no process holds whole tensors (a sharded model).

    The engine then never gathers a whole original or gradient: it calls the reductions below
    (``original_summary``, ``gradient_summary``, ``element``, ``write_along``, ...), which such
    a view serves from its shards (a local result and one collective). Ordinary views leave
    this ``False``, and the engine computes the reductions from whole flat vectors.
    """

    @abc.abstractmethod
    def original(self, segment: int) -> FloatArray:
        """The tensor's values when the view was opened, flattened, as float64 (a copy)."""

    @abc.abstractmethod
    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        """Write ``values`` at flat positions ``index`` of a tensor (``None``: the whole tensor).

        Values are rounded to the tensor's dtype. Returns the values actually stored, as
        float64, so the engine can use the exact step that was taken.
        """

    @abc.abstractmethod
    def reset(self, segment: int, index: IndexArray | None) -> None:
        """Write the original values back at ``index`` of a tensor (``None``: the whole tensor)."""

    def write_element(self, segment: int, local: int, value: float) -> float:
        """Write one element; return the value stored (after rounding), as a float.

        The engine calls this for every coordinate probe. The default goes through
        :meth:`write`; an adapter may override it with a path that allocates nothing.
        """
        index = np.array([local], dtype=np.intp)
        return float(self.write(segment, index, np.array([value]))[0])

    def reset_element(self, segment: int, local: int) -> None:
        """Write one element's original value back (default: through :meth:`reset`)."""
        self.reset(segment, np.array([local], dtype=np.intp))

    @abc.abstractmethod
    def evaluate(self) -> float:
        """Evaluate the loss at the current values and return it as a Python float.

        Raises:
            LossError: the loss is not a scalar (use :func:`scalar_loss_value`).
        """

    @property
    @abc.abstractmethod
    def loss_dtype(self) -> np.dtype[Any]:
        """The floating dtype the loss is computed in (valid after the first evaluation)."""

    @property
    def gradient_dtype(self) -> np.dtype[Any]:
        """The dtype the analytic gradient was computed in (valid after ``gradient()``).

        By default the loss dtype. An adapter that evaluates a float32 model in a float64 copy
        but takes the gradient from the model as it trains reports float32 here: the engine
        then allows for that gradient's own round-off.
        """
        return self.loss_dtype

    def gradient_spread(self) -> FloatArray | None:
        """A measured sample of the analytic gradient's own round-off, per element, or ``None``.

        Asked once, right after ``gradient_dtype``. An adapter whose gradient is computed in
        half precision (bfloat16, float16, autocast) may compute it a second time with
        different rounding and the same mathematics (the loss scaled by a factor that is not a
        power of two, the gradient divided by it again) and return the difference, flattened
        in layout order as float64: the engine then allows for that measured round-off in each
        tensor (:mod:`gradguard.engine.spread`). A bug in the backward is in both gradients
        and cancels from the difference; only rounding remains. The default, ``None``: not
        measured (the a-priori allowance of the gradient dtype alone).
        """
        return None

    @abc.abstractmethod
    def gradient(self) -> FloatArray:
        """The analytic gradient at the original values, flattened in layout order, as float64.

        Raises:
            GradientError: the gradient is missing, has the wrong structure or shape,
                or is not finite.
        """

    @abc.abstractmethod
    def restore(self) -> None:
        """Put every tensor (and any state the evaluations touched) back exactly."""

    def drifted(self) -> list[int]:
        """The tensors whose values differ from their originals although the engine wrote
        nothing to them: the loss (or the gradient function) changed its parameters.

        The engine asks once, after the determinism evaluation (step 6 of the call order),
        when every tensor should hold its original values. The default, ``[]``, means the
        adapter cannot tell (immutable arrays cannot drift).
        """
        return []

    @property
    def notes(self) -> dict[str, str | int | float | bool | None]:
        """Facts about how the check ran that a reader of the report needs (JSON values only).

        For instance ``{"evaluation": "float64 shadow copy", "tf32": "disabled during the
        check"}``. Read once, after the check; the default is empty.
        """
        return {}

    # -- optional: second order and forward mode ---------------------------------------------
    #
    # A view that can differentiate twice or in forward mode overrides these; the engine asks
    # :func:`require_methods` before its first evaluation, so a view without them is refused
    # with a SettingsError naming the adapter, never half-way through a check. They evaluate at
    # a point of their own and leave every tensor at its original values: the engine calls them
    # only while no tensor is perturbed (between the probes of the call order, step 7).

    def gradient_at(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The analytic gradient at ``original + displacement`` (every tensor at once).

        Order 2's numeric side: central differences of this gradient along a direction.
        ``displacement`` is flat, in layout order. Returns the gradient (flat float64) and the
        displacement actually taken once the perturbed values are rounded to the dtype they
        are evaluated in. Every tensor holds its original values again when it returns.
        """
        raise _missing(self, "gradient_at")

    def hvp(self, vector: FloatArray) -> FloatArray:
        """The analytic Hessian-vector product ``H v`` of the loss at the original values.

        Double backward in PyTorch, forward-over-reverse in JAX, nested tapes in TensorFlow;
        a NumPy view calls the user's ``hvp=``. Flat float64, in layout order.
        """
        raise _missing(self, "hvp")

    def jvp(self, vector: FloatArray) -> float:
        """The forward-mode derivative of the loss along ``vector`` at the original values.

        ``vector`` is flat in layout order (zero outside the tensors probed); the engine
        compares it with central differences of the loss (``mode="forward"``).
        """
        raise _missing(self, "jvp")

    def use_hvp(self, function: Callable[..., Any]) -> None:
        """Take the analytic ``H v`` from ``function(params, v)`` (``check(..., hvp=)``).

        Only a view without autodiff of its own accepts one (NumPy); the default refuses.
        """
        raise SettingsError(
            f"hvp= is for params the {self.adapter} adapter cannot differentiate twice itself; "
            f"the {self.adapter} adapter computes H v with its own autodiff: leave hvp unset"
        )

    # -- reductions: served by a partitioned view; computed from whole vectors by default ----

    def _dense(self) -> DenseValues:
        """Whole originals and gradient, read once (the defaults' source)."""
        dense: DenseValues | None = self.__dict__.get("_gradguard_dense")
        if dense is None:
            originals = [self.original(s) for s in range(len(self.layout))]
            dense = DenseValues(self.layout, originals, self.gradient(), self.write)
            self.__dict__["_gradguard_dense"] = dense
        return dense

    def original_summary(self) -> tuple[FloatArray, FloatArray]:
        """Per tensor, the sum of squares and the largest magnitude of its original values."""
        originals = [self.original(s) for s in range(len(self.layout))]
        return DenseValues(self.layout, originals, np.empty(0), self.write).original_summary()

    def gradient_summary(self) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        """Per tensor, its gradient's sum of squares and its number of non-zero entries.

        Step 5 of the call order for a partitioned view: the gradient is computed by now.
        """
        return self._dense().gradient_summary()

    def element(self, segment: int, local: int) -> tuple[float, float]:
        """One element's original value and analytic gradient (flat position ``local``)."""
        return self._dense().element(segment, local)

    def gradient_elements(
        self, segment: int, positions: IndexArray, transposed: bool = False
    ) -> FloatArray:
        """The gradient at flat ``positions`` (of the transpose, for a square matrix)."""
        return self._dense().gradient_elements(segment, positions, transposed)

    def write_along(self, segment: int, direction: Direction, step: float) -> None:
        """Write ``original + step * direction`` into a whole tensor, rounded to its dtype.

        Called in pairs, ``+step`` then ``-step`` (an evaluation between), before
        :meth:`gradient_along`; ``direction.values(positions)`` gives the direction at any
        global flat positions, so a shard writes its own elements only.
        """
        self._dense().write_along(segment, direction, step)

    def gradient_along(self, segment: int, direction: Direction, step: float) -> float:
        """The analytic derivative along ``direction`` for the last :meth:`write_along` pair:
        ``g . v``, or ``g . (x+ - x-) / (2 step)`` over the values stored when they were
        rounded."""
        return self._dense().gradient_along(segment, direction, step)

    def gradient_dot(self, segment: int, direction: Direction, transposed: bool = False) -> float:
        """``g . v`` over one tensor (its transpose, for a square matrix)."""
        return self._dense().gradient_dot(segment, direction, transposed)

    def gradient_dots(self, parts: Sequence[tuple[int, Direction]]) -> FloatArray:
        """``g_t . v`` for each ``(t, v)`` of ``parts``, in order (joint screening's
        directions; a partitioned view answers them all with one collective)."""
        return self._dense().gradient_dots(parts)

    def nonzero_positions(self, segment: int, ranks: IndexArray) -> IndexArray:
        """The flat positions of the ``ranks``-th non-zero gradient entries (0: the first)."""
        return self._dense().nonzero_positions(segment, ranks)

    def largest_gradient_outside(self, segment: int, lo: int, hi: int) -> int | None:
        """The position of the largest ``|g|`` outside ``[lo, hi]`` (the first on ties), or if
        all are zero there the first position there; ``None`` if ``[lo, hi]`` is everything."""
        return self._dense().largest_gradient_outside(segment, lo, hi)

    def element_owners(self, items: Sequence[tuple[int, int]]) -> list[tuple[int, ...]] | None:
        """The processes (ranks) holding each ``(tensor, flat position)`` of ``items``.

        Asked once, for each tensor's worst element, when the report is written; ``None`` (the
        default): one process holds everything, the report names no owner.
        """
        return None

    def __enter__(self) -> FlatView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.restore()


class Adapter(abc.ABC):
    """Turns one kind of params container into a :class:`FlatView`.

    Attributes:
        name: A short name for reports and logs (``"numpy"``, ``"torch"``, ...).
        autodiff: Whether the adapter can compute the analytic gradient itself
            (``check(..., grad=None)``).
        numpy_loss: Whether the loss computes with NumPy (the NumPy adapter). Otherwise
            NumPy's BLAS runs on one thread during the check, so that the engine's arithmetic
            never spins threads against the framework's own pool
            (:mod:`gradguard.kit.threads`).
    """

    name: ClassVar[str]
    autodiff: ClassVar[bool] = False
    numpy_loss: ClassVar[bool] = False

    @abc.abstractmethod
    def open(self, params: Any, loss: Callable[..., Any], grad: Any) -> FlatView:
        """Validate the inputs and return a view; nothing is modified until the engine writes.

        Args:
            params: The container this adapter claimed.
            loss: ``loss(params) -> scalar``.
            grad: A callable ``grad(params)`` returning the gradient in params' structure,
                that structure itself, or ``None`` for the adapter's own autodiff.

        Raises:
            InvalidParamsError: the params cannot be checked.
            GradientError: ``grad`` is ``None`` and the adapter has no autodiff.
        """

    def lock_keys(self, params: Any) -> Iterable[Hashable]:
        """What identifies the memory of the tensors in ``params``, for one check at a time.

        Two checks whose keys overlap never run at once (:mod:`gradguard.kit.locks`). The
        default keys NumPy arrays by the object owning their memory and anything else by
        identity; an adapter whose tensors can share memory under different objects (views
        of one storage, a model and a dict of its parameters) names that memory instead.
        """
        return default_keys(params)


DERIVATIVE_METHODS = {
    "gradient_at": "second-order checks (order=2)",
    "hvp": "second-order checks (order=2)",
    "jvp": "forward-mode checks (mode='forward')",
}
"""The optional :class:`FlatView` methods, and what needs each."""


def _missing(view: FlatView, method: str) -> SettingsError:
    need = DERIVATIVE_METHODS.get(method, method)
    return SettingsError(
        f"the {view.adapter} adapter does not support {need}: its view has no {method}(). "
        "Check order 1 in reverse mode (the default), or use an adapter that implements it "
        "(torch, jax; NumPy with hvp=)"
    )


def require_methods(view: FlatView, methods: Iterable[str]) -> None:
    """Refuse a view that does not override the optional methods a check needs.

    Raises:
        SettingsError: naming the adapter and what it lacks, before any evaluation.
    """
    for method in methods:
        if getattr(type(view), method) is getattr(FlatView, method):
            raise _missing(view, method)


def scalar_loss_value(value: Any) -> float:
    """Convert a loss value to a Python float, or raise :class:`LossError` if it is not a scalar.

    Accepts Python numbers and anything array-like with exactly one element, except a list or
    tuple (:func:`~gradguard.kit.validate.check_loss_value`).
    """
    if isinstance(value, bool):
        raise LossError(f"the loss returned a bool ({value!r}); it must return a float scalar")
    check_loss_value(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        array = np.asarray(value)
    except Exception as exc:  # an object NumPy cannot read at all
        raise LossError(
            f"the loss returned {type(value).__name__}, which is not a number; "
            "it must return a scalar (a float or a 1-element array)"
        ) from exc
    if array.size != 1:
        raise LossError(
            f"the loss returned an array of shape {array.shape}; it must return a scalar "
            "(reduce it, e.g. with .mean() or .sum())"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise LossError(f"the loss returned a value of dtype {array.dtype}; it must be a float")
    return float(array.reshape(()))
