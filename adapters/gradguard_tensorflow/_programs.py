"""The functions a check calls: loss evaluations and the analytic gradient, compiled.

Two kinds, chosen per check by :class:`~gradguard_tensorflow._view.TensorFlowView`:

- :class:`StatelessProgram`, for Keras variables: the loss runs inside a Keras
  ``StatelessScope`` that maps every checked variable to a tensor (the value the check
  starts from, read from a private variable of the adapter, with the perturbation applied
  as a tensor op), so nothing is ever written into the user's variables. Writes the loss
  makes (BatchNormalization's moving statistics, a Dropout seed generator advancing) land
  in the scope and are dropped; mapping the seed generators' states to their values when
  the check opened makes every evaluation draw the same dropout mask.
- :class:`AssignProgram`, for plain ``tf.Variable`` objects that the loss reads directly:
  inside one compiled call, the perturbed tensor is assigned to the variable *densely*
  (``assign``; never a sparse scatter into the variable, which would switch it into
  copy-on-read mode for the rest of training), the loss is evaluated, and the saved
  original is assigned back. Other variables the traced loss writes are reset too.

Both take the perturbation as two arguments, ``(probe, dense)``. ``probe`` is a float64
vector ``[o_0 .. o_{T-1}, s_1 .. s_k, i_1 .. i_k, v_1 .. v_k]`` for ``T`` checked tensors:

- ``o_t >= 0``: tensor ``t`` is replaced by ``dense[o_t : o_t + n_t]`` (a whole-tensor write:
  a direction; a joint probe sets several offsets, ``dense`` being the perturbed tensors
  one after the other, so one call carries every tensor of a joint probe);
- otherwise the values ``v_j`` with ``s_j = t`` are scattered at flat positions ``i_j`` into a
  copy of tensor ``t`` (coordinate probes: a few elements and their values, of one tensor or
  of several at once, cheap to transfer);
- ``o_t = -1`` and no ``s_j = t``: tensor ``t`` as it was (every ``o_t = -1`` and ``k = 0``:
  nothing perturbed).

One small tensor per evaluation keeps the per-call cost down: each argument converted and
passed costs ~15 us, as much as a copy of a 100,000-element tensor.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.errors import LossError
from gradguard.kit import notes as kit_notes
from gradguard.kit.dtypes import judged_dtype, least_precise
from gradguard.kit.signals import protected
from gradguard.kit.validate import check_loss_value
from gradguard_tensorflow._compat import call_flat, map_state
from gradguard_tensorflow._graph import captured_resources, float_precisions, written_resources
from gradguard_tensorflow._params import Slot, resource_of
from gradguard_tensorflow._precision import Float64Unavailable, float64_trace

__all__ = [
    "AssignProgram",
    "LossBypassesScope",
    "Program",
    "StatelessFunctions",
    "StatelessProgram",
    "scalar_loss",
]

_LOW_PRECISIONS = ("float16", "bfloat16", "float32")
_PROBE_SPEC = tf.TensorSpec([None], tf.float64)
Notes = dict[str, str | int | float | bool | None]


class LossBypassesScope(Exception):
    """The traced loss reads a checked variable's storage directly, not through Keras."""


def scalar_loss(value: Any) -> Any:
    """The loss value as a float scalar tensor.

    Raises:
        LossError: ``value`` is not a float scalar (checked on the static shape at trace).
    """
    if value is None:
        raise LossError("the loss returned None; it must return a float scalar (the loss value)")
    if isinstance(value, bool):
        raise LossError(f"the loss returned a bool ({value!r}); it must return a float scalar")
    check_loss_value(value)
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as exc:
        raise LossError(
            f"the loss returned {type(value).__name__}, which is not a number; it must return "
            "a float scalar tensor"
        ) from exc
    if not tensor.dtype.is_floating:
        raise LossError(
            f"the loss returned a tensor of dtype {tensor.dtype.name}; it must return a float "
            "scalar (cast it, or return the loss rather than a count or a mask)"
        )
    shape = tensor.shape
    if shape.rank is not None and shape.is_fully_defined() and shape.num_elements() != 1:
        raise LossError(
            f"the loss returned a tensor of shape {tuple(shape.as_list())}; it must return a "
            "scalar: reduce it over the batch (tf.reduce_mean, keras.ops.mean)"
        )
    return tf.reshape(tensor, [])


def _lowest(found: dict[str, str], fallback: np.dtype[Any]) -> str:
    """The least precise float dtype in a :func:`float_precisions` result."""
    for name in (*_LOW_PRECISIONS, "float64"):
        if name in found:
            return name
    return str(fallback)


def _least_precise(slots: Sequence[Slot]) -> np.dtype[Any]:
    return least_precise(*(s.dtype for s in slots))


def _transport(dtypes: Sequence[Any]) -> Any:
    """The dtype perturbation values travel in: the segments' common dtype, or float64."""
    distinct = set(dtypes)
    return distinct.pop() if len(distinct) == 1 else tf.float64


def _perturbed(value: Any, t: int, probe: Probe) -> Any:
    """``value`` (checked tensor ``t``) as the perturbation arguments say.

    ``o_t >= 0``: replaced by its slice of ``dense``; some ``s_j == t``: those values scattered
    at their flat positions into a copy; anything else: ``value`` itself (no copy). The choice
    is made on the probe vector alone: a predicate on the size of ``dense`` is mis-folded by
    Grappler in TensorFlow 2.21 (the wrong branch runs for an empty input).
    """
    shape = value.shape  # a variable's: fully defined
    offset = probe.offsets[t]
    mine = tf.equal(probe.segments, t)

    def whole() -> Any:
        part = tf.slice(probe.dense, tf.reshape(offset, [1]), [shape.num_elements()])
        return tf.reshape(tf.cast(part, value.dtype), shape)

    def scattered() -> Any:
        flat = tf.reshape(value, [-1])
        idx = tf.reshape(tf.boolean_mask(probe.idx, mine), [-1, 1])
        upd = tf.cast(tf.boolean_mask(probe.upd, mine), value.dtype)
        return tf.reshape(tf.tensor_scatter_nd_update(flat, idx, upd), shape)

    def other() -> Any:
        return tf.cond(tf.reduce_any(mine), scattered, lambda: tf.identity(value))

    return tf.cond(offset >= 0, whole, other)


class Probe:
    """The perturbation arguments ``(probe, dense)`` unpacked inside a traced function."""

    def __init__(self, probe: Any, dense: Any, count: int) -> None:
        self.offsets = tf.cast(probe[:count], tf.int64)
        k = (tf.size(probe) - count) // 3
        self.segments = tf.cast(probe[count : count + k], tf.int64)
        self.idx = tf.cast(probe[count + k : count + 2 * k], tf.int64)
        self.upd = probe[count + 2 * k :]
        self.dense = dense

    def touches(self, t: int) -> Any:
        """Whether tensor ``t`` differs from its original in this evaluation."""
        return tf.logical_or(self.offsets[t] >= 0, tf.reduce_any(tf.equal(self.segments, t)))


def _dense(grads: Sequence[Any]) -> list[Any]:
    """Gradients as dense tensors (an embedding's IndexedSlices too); ``None`` stays: the
    variable is not connected to the loss (the view counts it as zero, and says so)."""
    return [None if g is None else tf.convert_to_tensor(g) for g in grads]


def _tape_gradient(
    sources: Sequence[Any], scope: Any, loss: Callable[..., Any], params: Any, written: Any
) -> tuple[Any, list[Any]]:
    """The loss inside ``scope`` and its gradient with respect to ``sources``; then the state
    the loss wrote is reset (``written``, a :class:`WrittenState`)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(sources)
        with protected(scope):  # entered and left whole under a Ctrl-C
            out = scalar_loss(loss(params))
    grads = tape.gradient(out, sources, unconnected_gradients=tf.UnconnectedGradients.NONE)
    written.reset()
    return out, _dense(grads)


def _trace(function: Callable[..., Any], signature: Sequence[Any]) -> Any:
    """A concrete function traced from ``function`` (autograph off: the user's Python control
    flow runs as Python, once, as in a Keras model's own call)."""
    return tf.function(function, input_signature=list(signature), autograph=False)


class WrittenState:
    """Variables the traced loss writes that are not checked: a step counter, a
    ``tf.random.Generator``'s state, a tf.Module's running statistics.

    Read once before the first evaluation, written back inside every compiled call after
    the loss (so every evaluation starts from the same state, and random draws repeat),
    and put back when the check ends.
    """

    def __init__(self, found: Sequence[tuple[Any, Any]]) -> None:
        self.entries: list[tuple[Any, Any, Any]] = []
        for handle, dtype in found:
            try:
                value = tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype)
            except Exception:  # not readable as a variable: leave it alone
                continue
            self.entries.append((handle, dtype, tf.constant(value.numpy())))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def reset(self) -> None:
        """Write the saved values back (inside a traced function, or eagerly)."""
        for handle, _, value in self.entries:
            tf.raw_ops.AssignVariableOp(resource=handle, value=value)

    def restore(self) -> None:
        """Write back, eagerly, every saved value whose bits changed."""
        for handle, dtype, value in self.entries:
            current = tf.raw_ops.ReadVariableOp(resource=handle, dtype=dtype).numpy()
            saved = value.numpy()
            if current.tobytes() != saved.tobytes() or current.shape != saved.shape:
                tf.raw_ops.AssignVariableOp(resource=handle, value=value)

    def describe(self) -> str:
        count = len(self.entries)
        return (
            f"{count} variable{'s' if count > 1 else ''} outside params written by the loss "
            "(counters, random generators, statistics): reset after every evaluation and "
            "at the end"
        )


_NO_STATE = WrittenState(())


class Program:
    """The evaluations and the gradient of one check.

    Attributes:
        precision: ``"float64"`` (a float64 trace of the model) or ``"native"``.
        value_dtypes: The dtype each checked tensor is evaluated in (perturbations are
            rounded to it).
        transport: The dtype of the ``dense`` argument.
        loss_dtype: The float dtype the loss is computed in, read from the graph.
        compiled: Whether the functions are ``tf.function`` traces (else eager).
        trace_s: Seconds spent tracing during this check.
        notes: Facts for the report.
        writes: What the evaluations write into the user's variables (for the report).
    """

    precision: str
    value_dtypes: list[np.dtype[Any]]
    transport: Any
    loss_dtype: np.dtype[Any]
    compiled: bool
    trace_s: float
    notes: Notes
    writes: str
    written: WrittenState = _NO_STATE

    def evaluate(self, probe: Any, dense: Any) -> Any:
        """The loss with the perturbation ``(probe, dense)`` applied, as a scalar tensor."""
        raise NotImplementedError

    def gradient(self) -> tuple[Any, list[Any]]:
        """The loss and the analytic gradient of each checked tensor at the originals."""
        raise NotImplementedError

    def use_eager(self, reason: str) -> None:
        """Switch to eager evaluation (the loss could not be traced)."""
        raise NotImplementedError


# -- Keras variables: nothing written ------------------------------------------------------


class StatelessFunctions:
    """The traced functions of a :class:`StatelessProgram`, reusable across checks.

    They take the checked and the state variables' values as arguments, so nothing of one
    check is baked into them, and a :class:`~gradguard_tensorflow.ModelLoss` keeps them for
    the next check of the same model.
    """

    def __init__(
        self,
        params: Any,
        loss: Callable[..., Any],
        slots: Sequence[Slot],
        state: Sequence[Any],
        *,
        float64: bool,
        roots: Sequence[Any],
        of_values: bool = False,
    ) -> None:
        """``of_values``: a native trace that differentiates the loaded values, as a float64
        one does, rather than the variables themselves (so loading other values moves it)."""
        self.variables = [s.variable for s in slots]
        self.state = list(state)
        self.float64 = float64
        self.roots = list(roots)
        self.loss = loss
        self.trace_s = 0.0
        self.found: dict[str, str] = {}
        self.written = _NO_STATE
        self.value_dtypes = [tf.float64 if float64 else tf.as_dtype(s.dtype) for s in slots]
        self.state_dtypes = [
            tf.float64 if float64 and resource_of(v).dtype.is_floating else resource_of(v).dtype
            for v in state
        ]
        self.transport = _transport(self.value_dtypes)
        resources = [s.resource for s in slots]
        self.handles = {id(s.resource.handle): s.name for s in slots}
        # The values a check starts from live in private variables that each check loads
        # (a dense assign into variables of ours): the compiled functions read them, so
        # they take only the small perturbation arguments, and serve every later check.
        self.value_variables = [
            tf.Variable(tf.zeros(s.shape, d), trainable=False)
            for s, d in zip(slots, self.value_dtypes, strict=True)
        ]
        self.state_variables = [
            tf.Variable(tf.zeros(resource_of(v).shape, d), trainable=False)
            for v, d in zip(state, self.state_dtypes, strict=True)
        ]
        flat = tf.TensorSpec([None], self.transport)

        def scope(values: Sequence[Any], state_values: Sequence[Any]) -> Any:
            scope = keras.StatelessScope(collect_losses=True)
            for variable, value in zip(self.variables, values, strict=True):
                map_state(scope, variable, value)
            for variable, value in zip(self.state, state_values, strict=True):
                map_state(scope, variable, value)
            return scope

        def read(variables: Sequence[Any]) -> list[Any]:
            return [v.read_value() for v in variables]

        def evaluate(probe: Any, dense: Any) -> Any:
            values = read(self.value_variables)
            state_values = read(self.state_variables)
            unpacked = Probe(probe, dense, len(values))
            chosen = [_perturbed(value, t, unpacked) for t, value in enumerate(values)]
            with protected(scope(chosen, state_values)):
                out = scalar_loss(loss(params))
            self.written.reset()
            return out

        def gradient_of_values() -> Any:
            values = read(self.value_variables)
            state_values = read(self.state_variables)
            return _tape_gradient(values, scope(values, state_values), loss, params, self.written)

        def gradient_of_variables() -> Any:
            # With respect to the variables themselves, exactly as a training step computes
            # it (a tf.custom_gradient that closes over a variable sees the variable). Each
            # checked variable is mapped to its own tf.Variable, so Keras reads it (its
            # regularizer too) and any write still lands in the scope.
            state_values = read(self.state_variables)
            return _tape_gradient(
                resources, scope(resources, state_values), loss, params, self.written
            )

        self._scope = scope
        self._params = params
        self._derivatives: dict[str, Any] = {}
        self.evaluate_py = evaluate
        # A float64 trace differentiates the float64 values; a native one the variables.
        self.gradient_py = gradient_of_values if float64 or of_values else gradient_of_variables
        self.evaluate_specs = [_PROBE_SPEC, flat]
        self.gradient_specs: list[Any] = []
        self.evaluate_fn: Any = None
        self.gradient_fn: Any = None
        self.eager = False

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            if self.float64:
                with protected(float64_trace(self.roots, self.loss)):
                    yield
            else:
                yield
        finally:
            self.trace_s += time.perf_counter() - started

    def trace_evaluate(self) -> None:
        """Trace the evaluation and check what the graph does.

        Raises:
            Float64Unavailable: a float64 trace still computes in a lower precision.
            LossBypassesScope: the loss reads a checked variable's storage directly.
        """
        with self._tracing():
            concrete = _trace(self.evaluate_py, self.evaluate_specs).get_concrete_function()
            ours = {id(v.handle) for v in (*self.value_variables, *self.state_variables)}
            written = WrittenState(
                [(h, d) for h, d in written_resources(concrete) if id(h) not in ours]
            )
            if written:  # trace again, now resetting what the loss writes
                self.written = written
                concrete = _trace(self.evaluate_py, self.evaluate_specs).get_concrete_function()
        direct = [
            self.handles[id(h)] for h in captured_resources(concrete) if id(h) in self.handles
        ]
        if direct:
            raise LossBypassesScope(
                f"the loss reads {', '.join(direct)} directly, not through Keras"
            )
        self.found = float_precisions(concrete)
        if self.float64:
            low = [d for d in _LOW_PRECISIONS if d in self.found]
            if low:
                raise Float64Unavailable(
                    f"the float64 trace still computes in {low[0]} ({self.found[low[0]]})"
                )
        self.evaluate_fn = call_flat(concrete)

    def trace_gradient(self) -> None:
        with self._tracing():
            concrete = _trace(self.gradient_py, self.gradient_specs).get_concrete_function()
        self.gradient_fn = call_flat(concrete)

    def use_eager(self) -> None:
        self.evaluate_fn = self.evaluate_py
        self.gradient_fn = self.gradient_py
        self.eager = True

    # -- second order and forward mode: traced on first use, in the trace's precision ------

    def _derivative(self, name: str) -> Any:
        """A derivative function of the values (and tangents), traced once."""
        function = self._derivatives.get(name)
        if function is not None:
            return function
        specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.value_variables]
        loss, params, written = self.loss, self._params, self.written
        zero = tf.UnconnectedGradients.ZERO

        def value_of(values: Sequence[Any]) -> Any:
            state_values = [v.read_value() for v in self.state_variables]
            with protected(self._scope(values, state_values)):
                out = scalar_loss(loss(params))
            written.reset()
            return out

        def gradient_at(*values: Any) -> Any:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(values)
                out = value_of(values)
            return _dense(tape.gradient(out, list(values), unconnected_gradients=zero))

        def hvp(*tangents: Any) -> Any:
            values = [v.read_value() for v in self.value_variables]
            with tf.GradientTape(watch_accessed_variables=False) as outer:
                outer.watch(values)
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(values)
                    out = value_of(values)
                grads = inner.gradient(out, values, unconnected_gradients=zero)
                along = tf.add_n(
                    [tf.reduce_sum(g * t) for g, t in zip(grads, tangents, strict=True)]
                )
            return _dense(outer.gradient(along, values, unconnected_gradients=zero))

        def jvp(*tangents: Any) -> Any:
            values = [v.read_value() for v in self.value_variables]
            with tf.autodiff.ForwardAccumulator(values, list(tangents)) as accumulator:
                out = value_of(values)
            return accumulator.jvp(out, unconnected_gradients=zero)

        chosen = {"gradient_at": gradient_at, "hvp": hvp, "jvp": jvp}[name]
        if self.eager:
            function = chosen
        else:
            with self._tracing():
                function = _trace(chosen, specs).get_concrete_function()
        self._derivatives[name] = function
        return function

    def gradient_at(self, values: Sequence[Any]) -> list[Any]:
        """The gradient with respect to the values at ``values`` (nested tapes' inner one)."""
        return list(self._derivative("gradient_at")(*values))

    def hvp(self, tangents: Sequence[Any]) -> list[Any]:
        """``H v`` at the loaded values: a GradientTape over a GradientTape."""
        return list(self._derivative("hvp")(*tangents))

    def jvp(self, tangents: Sequence[Any]) -> Any:
        """The loss's forward-mode derivative (``tf.autodiff.ForwardAccumulator``)."""
        return self._derivative("jvp")(*tangents)

    def load(self, values: Sequence[Any], state_values: Sequence[Any]) -> None:
        """Set the values the functions start from (this check's snapshot)."""
        for variable, value in zip(self.value_variables, values, strict=True):
            variable.assign(tf.cast(value, variable.dtype), read_value=False)
        for variable, value in zip(self.state_variables, state_values, strict=True):
            variable.assign(tf.cast(value, variable.dtype), read_value=False)

    def matches(self, slots: Sequence[Slot], state: Sequence[Any], float64: bool) -> bool:
        """Whether these functions were traced for exactly these variables."""
        return (
            self.float64 == float64
            and not self.eager
            and not self.written  # its saved state belongs to the check that traced it
            and len(self.variables) == len(slots)
            and len(self.state) == len(state)
            and all(a is s.variable for a, s in zip(self.variables, slots, strict=True))
            and all(a is b for a, b in zip(self.state, state, strict=True))
        )


class StatelessProgram(Program):
    """Evaluate a loss over Keras variables on values mapped through a StatelessScope."""

    writes = "none (the loss reads the perturbed values through a Keras StatelessScope)"

    def __init__(
        self,
        functions: StatelessFunctions,
        slots: Sequence[Slot],
        state_values: Sequence[Any],
        *,
        reused: bool,
        trace_s: float,
    ) -> None:
        self.functions = functions
        self.precision = "float64" if functions.float64 else "native"
        self.notes = {}
        if reused:
            self.notes[kit_notes.TRACE] = "reused from an earlier check with this model_loss"
        self.trace_s = trace_s
        self.compiled = not functions.eager
        self.written = functions.written
        if self.written:
            self.notes[kit_notes.STATE_RESET] = self.written.describe()
        self.value_dtypes = [np.dtype(d.as_numpy_dtype) for d in functions.value_dtypes]
        self.transport = functions.transport
        name = "float64" if functions.float64 else _lowest(functions.found, _least_precise(slots))
        self.loss_dtype = judged_dtype(name, self.notes)
        functions.load([s.saved for s in slots], state_values)

    def use_eager(self, reason: str) -> None:
        self.functions.use_eager()
        self.compiled = False

    def evaluate(self, probe: Any, dense: Any) -> Any:
        return self.functions.evaluate_fn(probe, dense)

    def gradient(self) -> tuple[Any, list[Any]]:
        out, grads = self.functions.gradient_fn()
        return out, list(grads)


# -- tf.Variables the loss reads directly: dense assign, put back ----------------------------


def _assign(variable: Any, value: Any) -> Any:
    variable.assign(value, read_value=False)
    return tf.constant(True)


class AssignProgram(Program):
    """Evaluate a loss that reads tf.Variables directly: assign densely, evaluate, put back."""

    precision = "native"
    writes = (
        "dense assign of the perturbed tensor into the checked variable inside each compiled "
        "evaluation, and of the saved original right after (never a sparse write)"
    )

    def __init__(
        self,
        params: Any,
        loss: Callable[..., Any],
        slots: Sequence[Slot],
        state: Sequence[Any],
        state_values: Sequence[Any],
    ) -> None:
        self.notes = {}
        self.compiled = True
        self.trace_s = 0.0
        self.value_dtypes = [s.dtype for s in slots]
        self.transport = _transport([tf.as_dtype(s.dtype) for s in slots])
        self._slots = list(slots)
        resources = [s.resource for s in slots]
        originals = [tf.constant(s.saved) for s in slots]
        keras_checked = [s for s in slots if s.is_keras]
        keras_state = [
            (v, tf.constant(value))
            for v, value in zip(state, state_values, strict=True)
            if isinstance(v, keras.Variable)
        ]
        # The params' own tf.Variable state, for an eager loss (no graph says what it writes).
        self._eager_state = WrittenState(
            [
                (v.handle, v.dtype)
                for v in map(resource_of, state)
                if not isinstance(v, keras.Variable)
            ]
        )
        self.written = _NO_STATE
        uses_keras = bool(keras_checked or keras_state)

        def scope() -> Any:
            if not uses_keras:
                return contextlib.nullcontext()
            # Keras state reads its saved values and Keras writes are dropped; a checked
            # Keras variable reads its own tf.Variable, where the perturbation is assigned.
            scope = keras.StatelessScope(collect_losses=True)
            for slot in keras_checked:
                map_state(scope, slot.variable, slot.resource)
            for variable, value in keras_state:
                map_state(scope, variable, value)
            return scope

        def evaluate(probe: Any, dense: Any) -> Any:
            unpacked = Probe(probe, dense, len(resources))
            for t, (variable, original) in enumerate(zip(resources, originals, strict=True)):
                tf.cond(
                    unpacked.touches(t),
                    lambda v=variable, o=original, t=t: _assign(v, _perturbed(o, t, unpacked)),
                    lambda: tf.constant(False),
                )
            with protected(scope()):
                out = scalar_loss(loss(params))
            # Automatic control dependencies order these writes after the loss's reads.
            for t, (variable, original) in enumerate(zip(resources, originals, strict=True)):
                tf.cond(
                    unpacked.touches(t),
                    lambda v=variable, o=original: _assign(v, o),
                    lambda: tf.constant(False),
                )
            self.written.reset()
            return out

        def gradient() -> Any:
            return _tape_gradient(resources, scope(), loss, params, self.written)

        self._evaluate_py = evaluate
        self._gradient_py = gradient
        flat = tf.TensorSpec([None], self.transport)
        self._evaluate_specs = [_PROBE_SPEC, flat]
        self._evaluate_fn: Any = None
        self._gradient_fn: Any = None
        self.loss_dtype = _least_precise(slots)

    def compile(self, *, gradient: bool) -> None:
        """Trace the evaluation (and the gradient); other variables the loss writes get reset."""
        started = time.perf_counter()
        checked = {id(s.resource.handle) for s in self._slots}
        try:
            concrete = _trace(self._evaluate_py, self._evaluate_specs).get_concrete_function()
            found = [(h, d) for h, d in written_resources(concrete) if id(h) not in checked]
            written = WrittenState(found)
            if written:  # trace again, now resetting what the loss writes
                self.written = written
                self.notes[kit_notes.STATE_RESET] = written.describe()
                concrete = _trace(self._evaluate_py, self._evaluate_specs).get_concrete_function()
        finally:
            self.trace_s += time.perf_counter() - started
        self._evaluate_fn = call_flat(concrete)
        precisions = float_precisions(concrete)
        self.loss_dtype = judged_dtype(_lowest(precisions, _least_precise(self._slots)), self.notes)
        if gradient:
            started = time.perf_counter()
            try:
                self._gradient_fn = call_flat(_trace(self._gradient_py, []).get_concrete_function())
            finally:
                self.trace_s += time.perf_counter() - started

    def use_eager(self, reason: str) -> None:
        self._evaluate_fn = self._evaluate_py
        self._gradient_fn = self._gradient_py
        if not self.written:  # no graph to tell what the loss writes: the params' own state
            self.written = self._eager_state
            if self.written:
                self.notes[kit_notes.STATE_RESET] = self.written.describe()
        self.compiled = False

    def evaluate(self, probe: Any, dense: Any) -> Any:
        return self._evaluate_fn(probe, dense)

    def gradient(self) -> tuple[Any, list[Any]]:
        out, grads = self._gradient_fn()
        return out, list(grads)
