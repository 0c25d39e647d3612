"""Compiled evaluations of the loss and its gradient, in float64 or the params' own dtype.

A :class:`Program` is the loss as a pure function of the flat leaf list
(``loss(rebuild(leaves))``), split into the checked tensors and the rest, compiled with
``jax.jit`` once: every evaluation passes the (perturbed) checked tensors as arguments, so
a check traces the loss once, not once per probe. The gradient is ``jax.grad`` of the same
function, so ``custom_vjp`` and ``custom_jvp`` rules are what gets checked.

A float64 program runs with x64 enabled through ``jax.enable_x64(True)``, a context JAX
keeps per thread, entered around each of the check's own calls and left on any exception:
the user's global ``jax_enable_x64`` setting is never changed. Both sides, the finite
differences and the analytic gradient, run in that mode, so they draw the same random
numbers (dropout masks drawn with x64 on differ from those drawn with it off).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradguard.errors import GradientError, LossError
from gradguard.kit.dtypes import judged_dtype, least_precise
from gradguard.kit.messages import one_line
from gradguard.kit.validate import check_loss_value
from gradguard_jax._jaxpr import analyze

__all__ = ["Float64Unavailable", "Program", "build_program", "loss_dtype_of"]

_LOW_FLOATS = ("float32", "float16", "bfloat16")
_FLOATS = (*_LOW_FLOATS, "float64")

Notes = dict[str, str | int | float | bool | None]


class Float64Unavailable(Exception):
    """The loss still computes in a lower precision when given float64 inputs."""


def loss_dtype_of(names: Sequence[str], notes: Notes | None = None) -> np.dtype[Any]:
    """The NumPy dtype the engine judges by: the least precise float among ``names``
    (bfloat16 judged as float16, noted in ``notes``: :func:`gradguard.kit.dtypes.judged_dtype`)."""
    floats = [name for name in names if name in _FLOATS] or ["float64"]
    return least_precise(*(judged_dtype(name, notes) for name in floats))


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


class Program:
    """The compiled loss and gradient for one structure of params, in one precision.

    Attributes:
        precision: ``"float64"`` (a shadow with x64 on) or ``"native"``.
        compiled: Whether evaluations are ``jax.jit`` calls (False: eager, the loss could
            not be traced).
        loss_dtype: The dtype the loss is computed in.
        trace_s: Seconds spent tracing and compiling the evaluation.
        why: Why the program is not compiled, if it is not.
    """

    def __init__(
        self,
        function: Callable[[list[Any], list[Any]], Any],
        precision: str,
    ) -> None:
        self.precision = precision
        self._function = function
        self._jitted = jax.jit(function)
        self._evaluate: Callable[..., Any] = self._jitted
        self._gradient: Callable[..., Any] = jax.jit(jax.grad(function))
        self._hvp: Callable[..., Any] | None = None
        self._jvp: Callable[..., Any] | None = None
        self.compiled = True
        self.loss_dtype: np.dtype[Any] = np.dtype(np.float64)
        self.flow_dtypes: dict[str, str] = {}
        self.trace_s = 0.0
        self.why: str | None = None
        self.traced = False
        self.unavailable: str | None = None
        self.notes: Notes = {}
        """Facts for the view's notes (a bfloat16 loss judged as float16)."""

    def context(self) -> contextlib.AbstractContextManager[None]:
        """The mode every call of this program runs in (x64 on for a float64 program)."""
        return jax.enable_x64(True) if self.precision == "float64" else _nothing()

    def trace(self, checked: list[Any], others: list[Any], flags: int) -> None:
        """Trace and compile the evaluation; check the loss is a scalar that depends on params.

        Raises:
            LossError: the loss is not a scalar, does not depend on the params, or uses a
                leaked tracer.
            Float64Unavailable: a float64 program computes in a lower precision somewhere.
        """
        if self.unavailable is not None:
            raise Float64Unavailable(self.unavailable)
        started = time.perf_counter()
        with self.context():
            try:
                traced = self._jitted.trace(checked, others)
            except jax.errors.UnexpectedTracerError as exc:
                raise LossError(
                    "the loss uses a JAX tracer that leaked out of an earlier transformation "
                    "(a value captured inside jax.jit, jax.grad or a scan and kept in a global "
                    "or a closure); compute the loss from the params it receives and from "
                    f"concrete arrays ({_first_line(exc)})"
                ) from exc
            except (
                jax.errors.ConcretizationTypeError,
                jax.errors.TracerBoolConversionError,
                jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError,
            ) as exc:
                self._use_eager(f"not compiled: the loss cannot be traced ({_first_line(exc)})")
                self._check_output(self._function(checked, others))
                self.loss_dtype = loss_dtype_of([str(x.dtype) for x in checked], self.notes)
                self.trace_s = time.perf_counter() - started
                return
            self._check_output(traced.out_info)
            extra = len(traced.jaxpr.jaxpr.invars) - len(checked) - flags
            if extra > 0:  # inputs the caller did not pass: tracers the loss closes over
                raise LossError(
                    f"the loss uses {extra} JAX tracer(s) that leaked out of an earlier "
                    "transformation (a value captured inside jax.jit, jax.grad or a scan and "
                    "kept in a global or a closure); compute the loss from the params it "
                    "receives and from concrete arrays"
                )
            flow = analyze(traced.jaxpr, [True] * len(checked) + [False] * flags)
            if not flow.depends:
                raise LossError(
                    "the loss does not depend on the params it is given (no data path from them "
                    "to the loss): compute it from the object it receives, e.g. "
                    "check(lambda m: loss_fn(m(x), y), model), not from a model or arrays held "
                    "in a closure, and do not wrap it in jax.lax.stop_gradient"
                )
            self.flow_dtypes = flow.dtypes
            if self.precision == "float64":
                low = [name for name in _LOW_FLOATS if name in flow.dtypes]
                if low:
                    self.unavailable = (
                        f"the loss still computes in {low[0]} with float64 params "
                        f"({flow.dtypes[low[0]]} produces it: a layer or cast with an explicit "
                        "dtype)"
                    )
                    raise Float64Unavailable(self.unavailable)
            names = [*flow.dtypes, str(traced.out_info.dtype), *(str(x.dtype) for x in checked)]
            self.loss_dtype = loss_dtype_of(names, self.notes)
            # Compiled now, so trace_s holds the compilation; later calls go through the jit
            # wrapper (its C++ dispatch is faster than the compiled object's), a cache hit.
            traced.lower().compile()
        self.trace_s = time.perf_counter() - started
        self.traced = True

    def _use_eager(self, why: str) -> None:
        self.compiled = False
        self.why = why
        self._evaluate = self._function
        self._gradient = jax.grad(self._function)

    @staticmethod
    def _check_output(value: Any) -> None:
        shape = tuple(getattr(value, "shape", ()))
        dtype = getattr(value, "dtype", None)
        if shape != ():
            raise LossError(
                f"the loss returned an array of shape {shape}; it must return a scalar "
                "(reduce it, e.g. with jnp.mean or jnp.sum)"
            )
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise LossError(f"the loss returned a value of dtype {dtype}; it must be a float")

    def evaluate(self, checked: list[Any], others: list[Any]) -> Any:
        """The loss at these values (a JAX scalar)."""
        with self.context():
            return self._evaluate(checked, others)

    def gradient(self, checked: list[Any], others: list[Any]) -> list[Any]:
        """``jax.grad`` of the loss with respect to the checked tensors."""
        with self.context():
            try:
                grads = self._gradient(checked, others)
            except (
                jax.errors.ConcretizationTypeError,
                jax.errors.TracerBoolConversionError,
            ) as exc:
                raise GradientError(
                    "jax.grad cannot differentiate the loss: it converts a traced value to a "
                    f"Python value ({_first_line(exc)}); use jnp operations and jnp.where "
                    "instead of float(), bool() or if on arrays"
                ) from exc
            return [np.asarray(g, dtype=np.float64) for g in grads]

    def hvp(self, checked: list[Any], others: list[Any], tangents: list[Any]) -> list[Any]:
        """``H v``: ``jax.jvp`` of ``jax.grad`` (forward over reverse) along ``tangents``.

        JAX refuses forward mode through a ``custom_vjp`` function; such a loss gets reverse
        over reverse (``jax.grad`` of ``grad . v``) instead, and the notes say so.
        """
        with self.context():
            if self._hvp is None:
                self._hvp = self._forward_over_reverse()
                try:
                    product = self._hvp(checked, others, tangents)
                except TypeError as exc:
                    if "custom_vjp" not in str(exc):
                        raise
                    self._hvp = self._reverse_over_reverse()
                    self.notes["hvp"] = "reverse over reverse (forward mode refuses custom_vjp)"
                    product = self._hvp(checked, others, tangents)
            else:
                product = self._hvp(checked, others, tangents)
            return [np.asarray(x, dtype=np.float64) for x in product]

    def _forward_over_reverse(self) -> Callable[..., Any]:
        grad = jax.grad(self._function)

        def hvp(c: list[Any], o: list[Any], t: list[Any]) -> Any:
            return jax.jvp(lambda x: grad(x, o), (c,), (t,))[1]

        return jax.jit(hvp) if self.compiled else hvp

    def _reverse_over_reverse(self) -> Callable[..., Any]:
        grad = jax.grad(self._function)

        def along(c: list[Any], o: list[Any], t: list[Any]) -> Any:
            g = grad(c, o)
            return sum(jnp.vdot(a, b) for a, b in zip(g, t, strict=True))

        hvp = jax.grad(along)
        return jax.jit(hvp) if self.compiled else hvp

    def jvp(self, checked: list[Any], others: list[Any], tangents: list[Any]) -> float:
        """The loss's forward-mode derivative (``jax.jvp``) along ``tangents``."""
        if self._jvp is None:
            function = self._function

            def jvp(c: list[Any], o: list[Any], t: list[Any]) -> Any:
                return jax.jvp(lambda x: function(x, o), (c,), (t,))[1]

            self._jvp = jax.jit(jvp) if self.compiled else jvp
        with self.context():
            return float(np.asarray(self._jvp(checked, others, tangents), dtype=np.float64))


def _first_line(exc: BaseException) -> str:
    return one_line(exc, limit=260)


# Programs outlive a check: a Guard checks the same loss every k steps, and a params pytree
# of the same structure, shapes and dtypes needs no new trace. Keyed weakly on the loss, so
# a loss that goes away takes its programs with it.
_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Program]] = weakref.WeakKeyDictionary()


def build_program(
    loss: Callable[..., Any],
    rebuild: Callable[[list[Any]], Any],
    positions: Sequence[int],
    total: int,
    precision: str,
    key: Any,
) -> tuple[Program, bool]:
    """The program for this loss and structure, reused from an earlier check when possible.

    Args:
        loss: The user's ``loss(obj) -> scalar``.
        rebuild: ``rebuild(leaves) -> obj``.
        positions: Where the checked tensors sit in the full leaf list.
        total: How many leaves there are.
        precision: ``"float64"`` or ``"native"``.
        key: What fixes the trace besides the loss (None: never reuse).

    Returns:
        The program, and whether it was reused.
    """
    try:
        per_loss = _CACHE.setdefault(loss, {}) if key is not None else None
    except TypeError:  # a loss that cannot be weakly referenced
        per_loss = None
    cache_key = (key, precision)
    if per_loss is not None and cache_key in per_loss:
        return per_loss[cache_key], True
    checked_at = list(positions)
    other_at = [i for i in range(total) if i not in set(checked_at)]

    def function(checked: list[Any], others: list[Any]) -> Any:
        leaves: list[Any] = [None] * total
        for i, value in zip(checked_at, checked, strict=True):
            leaves[i] = value
        for i, value in zip(other_at, others, strict=True):
            leaves[i] = value
        result = loss(rebuild(leaves))
        check_loss_value(result)  # (loss, extras) is refused as by every adapter
        value = jnp.asarray(result)
        return value.reshape(()) if value.size == 1 else value  # jax.grad needs shape ()

    program = Program(function, precision)
    if per_loss is not None:
        per_loss[cache_key] = program
    return program, False
