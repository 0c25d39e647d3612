"""The TensorFlow flat view: what the engine perturbs, evaluates and puts back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import numpy.typing as npt
import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.engine.layout import Layout
from gradguard.errors import GradGuardError, InvalidParamsError, SettingsError
from gradguard.kit import notes as kit_notes
from gradguard.kit.buffered import BufferedView
from gradguard.kit.contract import scalar_loss_value
from gradguard.kit.dtypes import judged_dtype, least_precise, precision_bits
from gradguard.kit.gradients import autodiff_gradient, flatten_gradient, leaves_by_name
from gradguard.kit.messages import one_line
from gradguard_tensorflow._distribute import require_no_strategy
from gradguard_tensorflow._loss import ModelLoss
from gradguard_tensorflow._params import Slot, collect, read_value, resource_of
from gradguard_tensorflow._precision import Float64Unavailable, referenced
from gradguard_tensorflow._programs import (
    AssignProgram,
    LossBypassesScope,
    Program,
    StatelessFunctions,
    StatelessProgram,
)
from gradguard_tensorflow._tf32 import Tf32Switch, gpu_visible

__all__ = ["TensorFlowView"]

FloatArray = npt.NDArray[np.float64]

# The private generator of the dithers behind a half-precision gradient's spread.
_DITHER_SEED = 0x6D70
# How far apart (relative) the native and float64 gradients may be before random draws that
# differ between the two dtypes are suspected (float32 backprop is within ~1e-6 on the zoo).
_RANDOM_DRAWS_APART = 1e-4
Notes = dict[str, str | int | float | bool | None]


def _short(exc: BaseException) -> str:
    """One line about an exception, for the report's notes."""
    return one_line(exc)


def _to_array(value: Any) -> Any:
    """A gradient leaf as NumPy reads it (a tf.Tensor, an IndexedSlices made dense)."""
    return value if isinstance(value, np.ndarray) else tf.convert_to_tensor(value).numpy()


def _same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class TensorFlowView(BufferedView):
    """A flat view over TensorFlow or Keras variables, evaluated by compiled functions.

    Opening it snapshots every checked variable and every other variable the params hold
    (non-trainable weights, seed generator states), and turns TF32 off; closing it puts
    back any variable whose bits changed (none, for Keras models) and TF32.
    """

    adapter = "tensorflow"
    # One compiled call carries every perturbed tensor (_programs.py: the probe's offsets into
    # ``dense``), so a joint probe costs one evaluation, as in PyTorch.
    joint_writes = True

    def __init__(
        self,
        params: Any,
        loss: Callable[..., Any],
        grad: Any,
        precision: str,
        *,
        native_gradient: bool = True,
    ) -> None:
        require_no_strategy()
        self._native_gradient = native_gradient
        self._gradient_dtype: np.dtype[Any] | None = None
        self._spread: FloatArray | None = None
        self._target = params
        self._loss = loss
        self._grad = grad
        self._precision = precision
        collected = collect(params)
        self._slots: list[Slot] = collected.slots
        super().__init__([slot.saved for slot in self._slots])
        self._state: list[Any] = collected.state
        self._state_saved = [read_value(v) for v in self._state]
        roots = list(collected.layers)
        for value in referenced(loss):  # a loss closing over the model it calls
            if isinstance(value, keras.Layer) and all(value is not r for r in roots):
                roots.append(value)
        self._roots = roots
        self.layout = Layout.from_tensors([(s.name, s.shape, s.dtype) for s in self._slots])
        self._cache = loss.compiled if isinstance(loss, ModelLoss) else None
        self._program: Program | None = None
        self._notes: Notes = {}
        self._why: list[str] = []  # why the evaluation is not the default one
        self._none: tuple[Any, Any] | None = None
        self._empty: Any = None
        self._blank = np.empty(0)  # the probe vector of "nothing perturbed"
        # TF32 last: nothing after it can fail, so restore() always runs when it was changed.
        self._tf32 = Tf32Switch.off()

    # -- choosing how to evaluate ----------------------------------------------------------

    def _ensure_program(self) -> Program:
        if self._program is None:
            self._program = self._open_program()
        return self._program

    def _open_program(self) -> Program:
        """Trace the loss (and its gradient) the best way that works for these params.

        Keras variables: a float64 trace if asked (the default ``"auto"``) and clean, else a
        native trace, both through a StatelessScope; a loss that reads a checked variable's
        storage directly, or plain tf.Variables: dense assigns. A loss that cannot be
        traced at all runs eagerly. Everything is decided here, before the engine reads
        ``loss_dtype``, so one check never mixes two ways of evaluating.
        """
        gradient = self._grad is None
        keras_only = all(s.is_keras for s in self._slots)
        # "auto" tries a float64 trace first: docs/tensorflow.md, "Numerics", has why. A given
        # grad is judged against it too, as a gradient computed in the variables' own dtype
        # (gradient_dtype): a float32 loss's noise would hide a 0.6% error in it.
        want64 = self._precision in ("auto", "float64")
        if keras_only and want64:
            try:
                return self._stateless(float64=True, gradient=gradient)
            except (Float64Unavailable, LossBypassesScope) as exc:
                reason = str(exc)
                keras_only = not isinstance(exc, LossBypassesScope)
            except GradGuardError:
                raise
            except Exception as exc:
                self._reraise_unbuilt(exc)
                reason = f"tracing in float64 failed ({_short(exc)})"
            if self._precision == "float64":
                raise SettingsError(
                    f"precision='float64' was asked for, but {reason}; use precision='auto' "
                    "(falls back to the variables' dtype) or 'native'"
                )
            self._why.append(f"no float64 trace: {reason}")
        elif self._precision == "float64":
            raise SettingsError(
                "precision='float64' needs Keras variables (plain tf.Variables are read by "
                "the loss in their own dtype); use precision='auto' or 'native'"
            )
        if keras_only:
            try:
                return self._stateless(float64=False, gradient=gradient)
            except LossBypassesScope as exc:
                self._why.append(f"variables assigned, not mapped: {exc}")
            except GradGuardError:
                raise
            except Exception as exc:
                self._reraise_unbuilt(exc)
                return self._eager_stateless(exc)
        return self._assign(gradient)

    def _stateless(self, *, float64: bool, gradient: bool) -> StatelessProgram:
        key = ("stateless", float64)
        cached = self._cache.get(key) if self._cache is not None else None
        reused = False
        if isinstance(cached, StatelessFunctions) and cached.matches(
            self._slots, self._state, float64
        ):
            functions, reused = cached, True
            before = functions.trace_s
        else:
            before = 0.0
            functions = StatelessFunctions(
                self._target,
                self._loss,
                self._slots,
                self._state,
                float64=float64,
                roots=self._roots,
            )
            functions.trace_evaluate()
        if gradient and functions.gradient_fn is None:
            functions.trace_gradient()
        if self._cache is not None and not reused:
            self._cache[key] = functions
        return StatelessProgram(
            functions,
            self._slots,
            self._state_saved,
            reused=reused,
            trace_s=functions.trace_s - before,
        )

    def _eager_stateless(self, exc: BaseException) -> StatelessProgram:
        self._why.append(f"not compiled: {_short(exc)}")
        functions = StatelessFunctions(
            self._target, self._loss, self._slots, self._state, float64=False, roots=self._roots
        )
        functions.use_eager()
        return StatelessProgram(
            functions, self._slots, self._state_saved, reused=False, trace_s=0.0
        )

    def _assign(self, gradient: bool) -> AssignProgram:
        program = AssignProgram(
            self._target, self._loss, self._slots, self._state, self._state_saved
        )
        try:
            program.compile(gradient=gradient)
        except GradGuardError:
            raise
        except Exception as exc:
            self._reraise_unbuilt(exc)
            self._why.append(f"not compiled: {_short(exc)}")
            program.use_eager(_short(exc))
        return program

    @staticmethod
    def _reraise_unbuilt(exc: BaseException) -> None:
        if isinstance(exc, ValueError) and "stateless scope" in str(exc):
            raise InvalidParamsError(
                "the loss creates or initializes a Keras variable while it is evaluated (a "
                "layer that is not built yet): call the model once on a batch before checking "
                f"it ({_short(exc)})"
            ) from exc

    # -- FlatView ----------------------------------------------------------------------------

    def evaluation_dtype(self, segment: int) -> np.dtype[Any]:
        # Deciding it traces the loss: a float64 trace evaluates every tensor in float64.
        return self._ensure_program().value_dtypes[segment]

    def _perturbation(self, program: Program) -> tuple[Any, Any]:
        """The ``(probe, dense)`` arguments for the current perturbations (_programs.py has
        the format): the touched elements of sparsely perturbed tensors (coordinate probes,
        one tensor's or several at once), every other perturbed tensor whole."""
        count = len(self._slots)
        if self._none is None:
            self._empty = tf.zeros([0], program.transport)
            self._blank = np.full(count, -1.0)
            self._none = (tf.constant(self._blank), self._empty)
        changes = self.perturbations
        if not changes:
            return self._none
        sparse = [c for c in changes if c.is_sparse()]
        whole = [c for c in changes if not c.is_sparse()]
        k = sum(c.touched.size for c in sparse if c.touched is not None)
        probe = np.empty(count + 3 * k)
        probe[:count] = self._blank
        at = count
        for change in sparse:
            touched = change.touched
            assert touched is not None  # sparse means a known set of positions
            n = touched.size
            probe[at : at + n] = change.segment
            probe[at + k : at + k + n] = touched
            probe[at + 2 * k : at + 2 * k + n] = change.touched_values
            at += n
        if not whole:
            return tf.constant(probe), self._empty
        offset = 0
        for change in whole:
            probe[change.segment] = offset
            offset += change.values.size
        transport = program.transport.as_numpy_dtype
        if len(whole) == 1:
            dense = whole[0].values.astype(transport, copy=False)
        else:
            dense = np.concatenate([c.values.astype(transport, copy=False) for c in whole])
        return tf.constant(probe), tf.constant(dense)

    def evaluate(self) -> float:
        program = self._ensure_program()
        try:
            value = program.evaluate(*self._perturbation(program))
        except tf.errors.InvalidArgumentError as exc:
            if "Input to reshape" in str(exc) and "[]" in str(exc):
                raise self._non_scalar(exc) from exc
            raise
        return scalar_loss_value(value.numpy())

    @staticmethod
    def _non_scalar(exc: BaseException) -> GradGuardError:
        from gradguard.errors import LossError

        return LossError(
            "the loss returned a tensor with more than one element; it must return a scalar: "
            f"reduce it over the batch (tf.reduce_mean) ({_short(exc)})"
        )

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._ensure_program().loss_dtype

    @property
    def gradient_dtype(self) -> np.dtype[Any]:
        """A given grad was computed by the user's code from the variables in their own
        dtype: it is worth the least precise of them, whatever the loss was traced in; so is
        the model's own (native) gradient."""
        if self._grad is not None:
            return least_precise(self.loss_dtype, *(s.dtype for s in self._slots))
        return self._gradient_dtype if self._gradient_dtype is not None else self.loss_dtype

    def gradient(self) -> FloatArray:
        if self._grad is not None:
            return self._user_gradient()
        program = self._ensure_program()
        _, grads = program.gradient()
        flat = autodiff_gradient(
            self.layout,
            grads,
            self._notes,
            to_array=_to_array,
            source="the analytic gradient (GradientTape)",
        )
        computed = self._compute_dtypes()
        native_dtype = least_precise(
            *(s.dtype for s in self._slots), *(judged_dtype(name) for name in computed)
        )
        if (
            self._native_gradient
            and isinstance(program, StatelessProgram)
            and program.precision == "float64"
            and native_dtype != np.float64
        ):
            return self._native(flat, native_dtype, computed)
        return flat

    # -- second order and forward mode (Keras variables, through the StatelessScope) --------

    def _functions(self, what: str) -> StatelessFunctions:
        program = self._ensure_program()
        if self._grad is not None and what == "order=2":
            raise SettingsError(
                "order=2 differentiates the loss twice with nested GradientTapes, and a given "
                "gradient cannot be differentiated: leave grad unset"
            )
        if not isinstance(program, StatelessProgram):
            raise SettingsError(
                f"{what} on TensorFlow needs Keras variables evaluated through a "
                "StatelessScope (a Keras model or layer); plain tf.Variables, or a loss that "
                "reads the variables directly, are checked at order 1 in reverse mode only"
            )
        return program.functions

    def _tensors(self, vector: FloatArray) -> list[Any]:
        return [
            tf.constant(
                vector[segment.offset : segment.stop]
                .reshape(segment.shape)
                .astype(self.evaluation_dtype(s))
            )
            for s, segment in enumerate(self.layout)
        ]

    def gradient_at(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        functions = self._functions("order=2")
        taken = np.zeros_like(displacement)
        values = []
        for s, segment in enumerate(self.layout):
            start = self._start(s)  # the original in the evaluation dtype, flat
            stored = (
                start.astype(np.float64) + displacement[segment.offset : segment.stop]
            ).astype(start.dtype)
            taken[segment.offset : segment.stop] = stored.astype(np.float64) - start
            values.append(tf.constant(stored.reshape(segment.shape)))
        grads = functions.gradient_at(values)
        flat = flatten_gradient(
            self.layout, grads, to_array=_to_array, source="the analytic gradient (GradientTape)"
        )
        return flat, taken

    def hvp(self, vector: FloatArray) -> FloatArray:
        product = self._functions("order=2").hvp(self._tensors(vector))
        return flatten_gradient(
            self.layout,
            product,
            to_array=_to_array,
            source="the Hessian-vector product (nested GradientTapes)",
        )

    def jvp(self, vector: FloatArray) -> float:
        value = self._functions("mode='forward'").jvp(self._tensors(vector))
        return float(np.asarray(value.numpy(), dtype=np.float64))

    def _native(
        self, reference: FloatArray, dtype: np.dtype[Any], computed: frozenset[str]
    ) -> FloatArray:
        """The gradient as a training step computes it: a GradientTape over the variables in
        their own dtype, through the same StatelessScope (nothing written), from the same
        state values; under a mixed policy (``computed``: the layers' compute dtypes that
        differ from their variables'), in that compute dtype, judged as such. The float64
        trace's gradient stays the reference the notes compare."""
        key = ("native-gradient",)
        functions = self._cache.get(key) if self._cache is not None else None
        try:
            if not (
                isinstance(functions, StatelessFunctions)
                and functions.matches(self._slots, self._state, False)
            ):
                functions = StatelessFunctions(
                    self._target,
                    self._loss,
                    self._slots,
                    self._state,
                    float64=False,
                    roots=self._roots,
                )
                functions.trace_gradient()
                if self._cache is not None:
                    self._cache[key] = functions
            functions.load([s.saved for s in self._slots], self._state_saved)
            flat = self._native_at(functions)
            if computed or precision_bits(dtype) == 16:
                self._spread = self._dithered_spread(dtype)
        except GradGuardError:
            raise
        except Exception as exc:  # a loss that traces in float64 but not natively
            self._notes[kit_notes.GRADIENT] = f"float64 trace (native: {_short(exc)})"
            return reference
        scale = float(np.linalg.norm(flat) + np.linalg.norm(reference)) or 1.0
        apart = float(np.linalg.norm(flat - reference)) / scale
        if apart > _RANDOM_DRAWS_APART and self._draws_randomly():
            self._notes[kit_notes.GRADIENT] = (
                f"float64 trace: the native {dtype} gradient differs by {apart:.1e}, and the "
                "model draws random numbers (a SeedGenerator), whose float32 and float64 "
                "draws can differ"
            )
            return reference
        policy = f", a mixed policy computing in {', '.join(sorted(computed))}" if computed else ""
        self._notes[kit_notes.GRADIENT] = (
            f"native {dtype} (the model as it trains{policy}); the float64 trace's differs by "
            f"{apart:.1e}"
        )
        self._gradient_dtype = dtype
        return flat

    def _native_at(self, functions: StatelessFunctions) -> FloatArray:
        """The native gradient at the values last loaded into ``functions``."""
        _, grads = functions.gradient_fn()
        return autodiff_gradient(
            self.layout,
            list(grads),
            {},
            to_array=_to_array,
            source="the native gradient (GradientTape in the variables' dtype)",
        )

    def _dithered_spread(self, dtype: np.dtype[Any]) -> FloatArray:
        """A sample of a half-precision gradient's own rounding (gradguard.engine.spread).

        A native trace that differentiates loaded values (cached like the others) gives the
        gradient at the saved values and at values multiplied by ``1 +- u`` (random signs from
        a private generator, ``u`` the dtype's unit round-off); the mean of the two dithered
        gradients minus the undithered one is the sample: the true gradient's change along
        the dither cancels in the mean, a bug in the backward in the difference, and rounding
        remains. Only values the scope maps change, never the user's variables.
        """
        key = ("native-values-gradient",)
        functions = self._cache.get(key) if self._cache is not None else None
        if not (
            isinstance(functions, StatelessFunctions)
            and functions.matches(self._slots, self._state, False)
        ):
            functions = StatelessFunctions(
                self._target,
                self._loss,
                self._slots,
                self._state,
                float64=False,
                roots=self._roots,
                of_values=True,
            )
            functions.trace_gradient()
            if self._cache is not None:
                self._cache[key] = functions
        unit = float(np.finfo(dtype).eps) / 2.0
        rng = np.random.default_rng(_DITHER_SEED)
        signs = [rng.choice([-1.0, 1.0], size=s.saved.shape) for s in self._slots]
        functions.load([s.saved for s in self._slots], self._state_saved)
        centre = self._native_at(functions)
        dithered = []
        for sign in (1.0, -1.0):
            values = [
                (s.saved.astype(np.float64) * (1.0 + sign * unit * r)).astype(s.saved.dtype)
                for s, r in zip(self._slots, signs, strict=True)
            ]
            functions.load(values, self._state_saved)
            dithered.append(self._native_at(functions))
        spread: FloatArray = (dithered[0] + dithered[1]) / 2.0 - centre
        return spread

    def gradient_spread(self) -> FloatArray | None:
        return self._spread

    def _compute_dtypes(self) -> frozenset[str]:
        """The compute dtypes of layers that compute in another dtype than their variables
        (``mixed_bfloat16``, ``mixed_float16``): the native gradient is worth the least
        precise of them, not its variables' float32."""
        found: set[str] = set()
        for root in self._roots:
            layers = [root, *getattr(root, "_flatten_layers", lambda: [])()]
            for layer in layers:
                policy = getattr(layer, "dtype_policy", None)
                if policy is not None and policy.compute_dtype != policy.variable_dtype:
                    found.add(str(policy.compute_dtype))
        return frozenset(found)

    def _draws_randomly(self) -> bool:
        """Whether the model holds random state (Keras SeedGenerators: dropout, noise)."""
        return any(
            "seed_generator" in getattr(v, "path", getattr(v, "name", "")) for v in self._state
        )

    def _user_gradient(self) -> FloatArray:
        value = self._grad(self._target) if callable(self._grad) else self._grad
        names = [s.name for s in self._slots]
        leaves = leaves_by_name(value, names, order="model.trainable_variables (or of params)")
        return flatten_gradient(self.layout, leaves, to_array=_to_array, source="grad")

    def drifted(self) -> list[int]:
        """Variables the loss assigned to (the engine writes none of them directly)."""
        return [
            s
            for s, slot in enumerate(self._slots)
            if not _same_bits(read_value(slot.variable), slot.saved)
        ]

    def restore(self) -> None:
        try:
            super().restore()
            if self._program is not None:
                self._program.written.restore()
            for slot in self._slots:
                if not _same_bits(read_value(slot.variable), slot.saved):
                    slot.resource.assign(slot.saved, read_value=False)
            for variable, saved in zip(self._state, self._state_saved, strict=True):
                if not _same_bits(read_value(variable), saved):
                    resource_of(variable).assign(saved, read_value=False)
        finally:
            self._tf32.restore()

    @property
    def notes(self) -> Notes:
        notes: Notes = {}
        program = self._program
        if program is not None:
            if program.precision == "float64":
                how = "float64 trace of the model"
            else:
                how = f"{program.loss_dtype} (the variables' own dtype)"
            mode = "compiled (tf.function)" if program.compiled else "eager"
            notes[kit_notes.EVALUATION] = "; ".join([f"{how}, {mode}", *self._why])
            notes[kit_notes.WRITES] = program.writes
            notes[kit_notes.TRACE_S] = round(program.trace_s, 3)
            notes.update(program.notes)
        notes.update(self._notes)
        tf32 = self._tf32.note(gpu_visible())
        if tf32 is not None:
            notes[kit_notes.TF32] = tf32
        return notes
