"""The TensorFlow flat view: what the engine perturbs, evaluates and puts back."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np
import numpy.typing as npt
import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.engine.layout import Layout
from gradguard.errors import GradGuardError, GradientError, InvalidParamsError, SettingsError
from gradguard.kit.buffered import BufferedView
from gradguard.kit.contract import scalar_loss_value
from gradguard.kit.tree import walk
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
from gradguard_tensorflow._tf32 import Tf32Switch

__all__ = ["TensorFlowView"]

FloatArray = npt.NDArray[np.float64]
Notes = dict[str, str | int | float | bool | None]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(exc: BaseException) -> str:
    """One line about an exception, for the report's notes."""
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class TensorFlowView(BufferedView):
    """A flat view over TensorFlow or Keras variables, evaluated by compiled functions.

    Opening it snapshots every checked variable and every other variable the params hold
    (non-trainable weights, seed generator states), and turns TF32 off; closing it puts
    back any variable whose bits changed (none, for Keras models) and TF32.
    """

    adapter = "tensorflow"

    def __init__(self, params: Any, loss: Callable[..., Any], grad: Any, precision: str) -> None:
        require_no_strategy()
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
        self._segment_tensors: dict[int, Any] = {}
        self._none: tuple[Any, Any] | None = None
        self._empty: Any = None
        # TF32 last: nothing after it can fail, so restore() always runs when it was changed.
        self._tf32 = Tf32Switch()

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
        if self._grad is not None:
            self._why.append("grad given: judged in the variables' own dtype")
        keras_only = all(s.is_keras for s in self._slots)
        # "auto" tries a float64 trace first: docs/tensorflow.md, "Numerics", has why.
        want64 = gradient and self._precision in ("auto", "float64")
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
                "precision='float64' needs Keras variables and no grad argument (plain "
                "tf.Variables are read by the loss in their own dtype, and a given grad is "
                "judged in its own dtype); use precision='auto' or 'native'"
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
        """The ``(probe, dense)`` arguments for the current perturbation."""
        if self._none is None:
            self._empty = tf.zeros([0], program.transport)
            self._none = (tf.constant([-1.0], tf.float64), self._empty)
        change = self.perturbation
        if change is None:
            return self._none
        if change.is_sparse():
            touched = change.touched
            assert touched is not None  # sparse means a known set of positions
            probe = np.empty(1 + 2 * touched.size)
            probe[0] = change.segment
            probe[1 : 1 + touched.size] = touched
            probe[1 + touched.size :] = change.touched_values
            return tf.constant(probe), self._empty
        dense = tf.constant(change.values.astype(program.transport.as_numpy_dtype, copy=False))
        # Segment numbers from len(layout) on ask for the whole tensor to be replaced.
        return self._whole(len(self._slots) + change.segment), dense

    def _whole(self, number: int) -> Any:
        tensor = self._segment_tensors.get(number)
        if tensor is None:
            tensor = self._segment_tensors[number] = tf.constant([float(number)], tf.float64)
        return tensor

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

    def gradient(self) -> FloatArray:
        if self._grad is not None:
            return self._user_gradient()
        _, grads = self._ensure_program().gradient()
        missing = [slot.name for slot, g in zip(self._slots, grads, strict=True) if g is None]
        if missing:  # not connected to the loss: a zero gradient, judged like any other
            self._notes["no_gradient"] = ", ".join(missing)
        arrays = [
            np.zeros(slot.shape) if g is None else g.numpy()
            for slot, g in zip(self._slots, grads, strict=True)
        ]
        return self._flatten(arrays, "the analytic gradient (GradientTape)")

    def _user_gradient(self) -> FloatArray:
        value = self._grad(self._target) if callable(self._grad) else self._grad
        return self._flatten(self._align(value), "grad")

    def _align(self, value: Any) -> list[Any]:
        names = [s.name for s in self._slots]
        leaves = list(walk(value))
        if isinstance(value, dict):
            by_name = {".".join(str(p) for p in path): leaf for path, leaf in leaves}
            if set(by_name) == set(names):
                return [by_name[name] for name in names]
        if len(leaves) == 1 and len(names) == 1:
            return [leaves[0][1]]
        if len(leaves) != len(names):
            raise GradientError(
                f"grad gave {len(leaves)} tensor(s) but {len(names)} variables are checked "
                f"({', '.join(names)}); give one gradient per variable, in the order of "
                "model.trainable_variables (or of params), or a dict keyed by those names"
            )
        return [leaf for _, leaf in leaves]

    def _flatten(self, grads: list[Any], source: str) -> FloatArray:
        flat = np.empty(self.layout.size, dtype=np.float64)
        for slot, segment, g in zip(self._slots, self.layout, grads, strict=True):
            if g is None:
                raise GradientError(
                    f"{source} for {slot.name!r} is None; give a tensor of shape {slot.shape} "
                    "for every variable (zeros if the loss ignores it)"
                )
            try:
                if not isinstance(g, np.ndarray):
                    g = tf.convert_to_tensor(g)
                value = np.asarray(g, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise GradientError(
                    f"{source} for {slot.name!r} is a {type(g).__name__}, not a tensor of "
                    f"shape {slot.shape}"
                ) from exc
            if value.shape != slot.shape:
                raise GradientError(
                    f"{source} for {slot.name!r} has shape {value.shape} but the variable has "
                    f"shape {slot.shape}; give one tensor per variable, same shape"
                )
            if not np.all(np.isfinite(value)):
                bad = np.argwhere(~np.isfinite(value))
                first = [int(i) for i in bad[0]] if value.ndim else []
                raise GradientError(
                    f"{source} for {slot.name!r} (shape {value.shape}) holds {bad.shape[0]} "
                    f"non-finite value(s), the first at {first}: {value[tuple(first)]!r}"
                )
            flat[segment.offset : segment.stop] = value.reshape(-1)
        return flat

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
            notes["evaluation"] = "; ".join([f"{how}, {mode}", *self._why])
            notes["writes"] = program.writes
            notes["trace_s"] = round(program.trace_s, 3)
            notes.update(program.notes)
        notes.update(self._notes)
        tf32 = self._tf32.note
        if tf32 is not None:
            notes["tf32"] = tf32
        return notes
