"""``GradCheckCallback``: gradient checks during ``model.fit``, every k steps, until they pass.

One callback for Keras 3 on every backend. It is a thin Keras front door over
:class:`gradguard.Guard`: it holds the configuration, counts global training steps, and at
each step the guard's :class:`~gradguard.guard.Schedule` says is due, asks the guard for a
check of the loss ``fit`` minimizes on a fixed probe batch. Everything else is the guard's:
per-check seeds, coverage that grows over the run, ``max_checks`` and switching off (with its
``guard_disabled`` record), ``GRADGUARD_DISABLE``, the log records.

What is checked depends on the backend (:func:`_fit_target`):

- **TensorFlow**: the TensorFlow adapter's :func:`~gradguard_tensorflow.model_loss`, compiled
  ``tf.function`` evaluations, a float64 trace of the model by default
  (:mod:`gradguard_tensorflow._fit`);
- **JAX and PyTorch**: Keras's stateless API (:class:`~gradguard_keras.KerasProbe`,
  ``stateless_call`` and ``stateless_compute_loss``), in the variables' own dtype; under JAX
  the evaluations are ``jax.jit``-compiled. Under JAX, ``fit`` keeps the variables' values
  outside the model between steps; reading ``Callback.model`` syncs them back, so a check
  sees the weights the coming step starts from.

``gradguard_tensorflow.GradCheckCallback`` is this class under its first name.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, Literal

import attrs
import keras  # type: ignore[import-untyped]  # Keras ships no type information
import numpy as np

from gradguard.engine import Settings
from gradguard.errors import GradGuardError, InvalidParamsError, LossError, SettingsError
from gradguard.figures import figures
from gradguard.guard import Guard, Schedule, disabled_by_environment
from gradguard.kit.messages import one_line
from gradguard.kit.options import Precision, PrecisionParams
from gradguard.policy import DEFAULT_ON_FAILURE, OnFailure, validate_on_failure
from gradguard.results import CheckReport
from gradguard_keras._stateless import KerasProbe

__all__ = ["GradCheckCallback"]

_VALUES = re.compile(r"\[[-+\d.eE\s\[\],]{40,}\]")  # a printed array: a sample's values


def _never_evaluated(params: Any) -> Any:
    """The loss of a guard that ``GRADGUARD_DISABLE`` switched off before it could check."""
    raise AssertionError("a guard disabled by GRADGUARD_DISABLE never evaluates its loss")


def _shapes(value: Any) -> Any:
    """The shapes in a (nested) batch, for error messages."""
    if value is None:
        return None
    return keras.tree.map_structure(lambda t: tuple(np.shape(t)), value)


def _is_dataset(value: Any) -> bool:
    """Whether ``value`` is a ``tf.data.Dataset`` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.data.Dataset)


@attrs.frozen
class _StatelessTarget:
    """What the callback checks on the JAX and PyTorch backends (fields as
    :class:`gradguard_tensorflow._fit.FitTarget`'s)."""

    loss: Callable[[Any], float]
    params: KerasProbe
    evaluate_once: Callable[[], float]
    run: Callable[[Callable[[], Any]], Any]
    key: Any = None


def _run_here(function: Callable[[], Any]) -> Any:
    return function()


def _fit_target(
    model: Any, batch: tuple[Any, Any, Any], training: bool, precision: Precision, previous: Any
) -> Any:
    """The loss the checks use and the params they check, for the current Keras backend.

    Raises:
        SettingsError: ``precision="float64"`` on a backend that cannot evaluate in float64.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from gradguard_tensorflow._fit import fit_target

        return fit_target(model, batch, training=training, precision=precision, previous=previous)
    if precision == "float64":
        raise SettingsError(
            f"precision='float64' needs the TensorFlow backend (a float64 trace of the model); "
            f"on the {backend} backend the checks evaluate in the variables' own dtype: use "
            "precision='auto' or 'native'"
        )
    x, y, sample_weight = batch
    probe = KerasProbe(model, x, y, sample_weight, training)
    return _StatelessTarget(loss=probe.loss, params=probe, evaluate_once=probe.loss, run=_run_here)


class GradCheckCallback(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Gradient checks during ``model.fit``: a probe batch every ``every`` steps, until they pass.

    One class for every Keras 3 backend (TensorFlow, JAX, PyTorch), importable as
    ``gradguard_keras.GradCheckCallback`` or ``gradguard_tensorflow.GradCheckCallback``.

    Example::

        from gradguard_keras import GradCheckCallback

        cb = GradCheckCallback(probe=(x_probe, y_probe), every=100, max_checks=3,
                               on_failure="warn", log_file="gradcheck.jsonl")
        model.fit(x, y, callbacks=[cb])
        print(cb.reports[-1])

    Keras callbacks never see the training batches, so the checks use a fixed probe batch.
    The loss checked is the one ``fit`` minimizes, ``model.compute_loss`` (the compiled
    loss plus the regularization losses), and the gradient is the backend's autodiff of it:
    on TensorFlow exactly as :func:`~gradguard_tensorflow.model_loss` defines them (compiled,
    float64 by default), on JAX and PyTorch through Keras's stateless API
    (:class:`~gradguard_keras.KerasProbe`, the variables' own dtype).
    A check at global step ``s`` runs just before training step ``s``
    (``on_train_batch_begin``, so the batches' logs are never waited for) and checks the
    weights that step starts from; steps are counted over epochs, from 0 in each ``fit``.
    After ``max_checks`` passing checks the callback switches itself off: the rest of
    training pays one attribute test per step. A check changes no weight, statistic, random
    state or optimizer state: training with the callback is bit-identical to training
    without it.

    Configuration is fixed here; the run-time state (step count, reports, coverage, run id)
    is reset in ``on_train_begin``, so one instance can serve several ``fit`` calls.

    Args:
        probe: The batch to check on: ``(x, y)``, ``(x, y, sample_weight)`` or ``(x,)``
            (arrays, tensors, or structures of them, as ``fit`` takes them), or a
            ``tf.data.Dataset`` (any backend), whose first batch is read once, in the first
            ``on_train_begin``, and kept (reading it creates an iterator: if the same
            dataset feeds ``fit`` and reshuffles each epoch, that moves its shuffling on,
            so pass a separate dataset, or arrays, when runs must be bit-identical).
        every: Check every this many training steps.
        start: The first global step checked.
        max_checks: Switch off after this many passing checks (``None``: never).
        on_failure: What a check that does not pass (failed, or inconclusive) does, as for
            every front door: ``"stop"`` (default, as ``TerminateOnNaN``): a
            :class:`~gradguard.GradientCheckWarning` with the table that says training stops,
            and ``model.stop_training`` (``fit`` ends after the step about to run);
            ``"raise"``: its :class:`~gradguard.GradientCheckError` out of ``fit``;
            ``"warn"``: the warning, and training goes on; ``"log"``: only the log record.
            A check that cannot run always raises its :class:`~gradguard.GradGuardError`.
        log_file: Append every check's record, and a ``guard_disabled`` record when the
            callback switches off, to this JSON-lines file (``source`` is ``"keras"``).
        run_id: The id shared by the records of one ``fit``, as ``gradguard report`` shows
            it (default: a fresh random one per fit).
        seed: Seed for the run's coordinate order and the checks' directions (default: a
            fresh one per fit, recorded in each report).
        training: The ``training`` flag of the checked forward passes. ``False`` (default):
            Dropout is the identity and BatchNormalization uses its moving statistics.
            ``True``: batch statistics, and one dropout mask, repeated for every evaluation
            of a check (the layers' random state is replayed, never advanced).
        precision: How the loss is evaluated: ``"auto"``, ``"float64"`` or ``"native"``, as
            for :class:`~gradguard_tensorflow.TFParams`. A float64 evaluation needs the
            TensorFlow backend: on JAX and PyTorch ``"auto"`` means ``"native"`` and
            ``"float64"`` is refused in ``on_train_begin``.
        tensors_per_check: Check only this many variables per check, rotating over them.
        eps: The step of each check, as for :func:`gradguard.check` (default: by dtype).
        tolerance: The tolerance of each check (default: by dtype).
        sample: Coordinates per check: an int, ``"all"``, or ``None`` for the default.
        directions: Random directions per variable and check (default 2).
        tensors: Check only the variables with these names (Keras paths).
        verbose: Verbosity mode, 0 or 1, as for Keras' own callbacks. 0 is silent (a check
            that does not pass still warns); 1 prints a line per check, and one when the
            callback switches itself off.

    Raises:
        SettingsError: an option is out of range (here, not in ``fit``).
    """

    def __init__(
        self,
        probe: Any,
        *,
        every: int = 100,
        start: int = 0,
        max_checks: int | None = 3,
        on_failure: OnFailure = DEFAULT_ON_FAILURE,
        log_file: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        training: bool = False,
        precision: Precision = "auto",
        tensors_per_check: int | None = None,
        eps: float | None = None,
        tolerance: float | None = None,
        sample: int | Literal["all"] | None = None,
        directions: int | None = None,
        tensors: list[str] | tuple[str, ...] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        validate_on_failure(on_failure)
        if verbose not in (0, 1):  # True and False too
            raise SettingsError(
                f"verbose must be 0 (silent) or 1 (a line per check), got {verbose!r}"
            )
        if tensors_per_check is not None and (
            isinstance(tensors_per_check, bool)
            or not isinstance(tensors_per_check, int)
            or tensors_per_check < 1
        ):
            raise SettingsError(
                f"tensors_per_check must be None or an int >= 1, got {tensors_per_check!r}"
            )
        self.schedule = Schedule(every=every, start=start, max_checks=max_checks)
        check_options: dict[str, Any] = {
            "eps": eps,
            "tolerance": tolerance,
            "sample": sample,
            "directions": directions,
            "tensors": tensors,
        }
        Settings(**check_options, seed=seed)  # validated now, not in the first check
        self.check_options = {k: v for k, v in check_options.items() if v is not None}
        self.precision = PrecisionParams(None, precision=precision).precision  # validated
        self.probe = probe
        self.on_failure = on_failure
        self.log_file = Guard.log_file_path(log_file)
        self.run_id = run_id
        self.seed = seed
        self.training = bool(training)
        self.tensors_per_check = tensors_per_check
        self.verbose = int(verbose)
        self._first_batch: tuple[Any, Any, Any] | None = None
        # What the last fit checked (on TensorFlow, with its traced functions: reused by the
        # next fit of the same compiled model).
        self._target: Any = None
        self._guard: Guard | None = None
        self._checking = False  # the guard is on: mirrors guard.active, read at every step
        self._steps_per_epoch: int | None = None
        self._per_execution = 1
        self._epoch_start = 0
        self._last_batch = -1
        self._next = 0
        self._figures: dict[str, float] = {}  # the epoch's last check, for its logs

    # -- state -------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the callback still checks (it switches itself off after ``max_checks``)."""
        if self._guard is None:
            return not disabled_by_environment()
        return self._guard.active

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the checks of the current (or last) ``fit``, oldest first."""
        return () if self._guard is None else self._guard.reports

    @property
    def guard(self) -> Guard | None:
        """The :class:`~gradguard.Guard` of the current (or last) ``fit``; ``None`` before."""
        return self._guard

    def disable(self) -> None:
        """Switch the checks off for the rest of this ``fit``, with a ``guard_disabled``
        record (reason ``"user"``); the next ``fit`` starts checking again."""
        if self._guard is not None:
            self._guard.disable("user", step=self._next)
        self._checking = False

    # -- Keras hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Reset the run-time state and validate the model and the probe, before any step.

        Raises:
            GradGuardError: the model is not a compiled, built Keras model with trainable
                variables, or the probe does not fit it (its message says what to fix).
        """
        self._guard = None
        self._checking = False
        self._epoch_start = 0
        self._last_batch = -1
        self._next = 0
        self._figures = {}
        params = self.params or {}
        self._steps_per_epoch = params.get("steps")
        model = self.model
        per_execution = getattr(model, "steps_per_execution", 1)
        self._per_execution = per_execution if isinstance(per_execution, int) else 1
        if disabled_by_environment():
            loss: Any = _never_evaluated
            checked: Any = model  # never opened: the guard is off from the start
        else:
            target = self._probe_target(model)
            loss, checked = target.loss, target.params
        self._guard = Guard(
            loss,
            checked,
            None,
            every=self.schedule.every,
            start=self.schedule.start,
            max_checks=self.schedule.max_checks,
            on_failure=self.on_failure,
            log_file=self.log_file,
            run_id=self.run_id,
            seed=self.seed,
            tensors_per_check=self.tensors_per_check,
            source="keras",
            **self.check_options,
        )
        self._checking = self._guard.active

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Check the weights the coming step starts from, when the schedule says so."""
        if not self._checking:  # switched off: the rest of training pays this test alone
            return
        guard = self._guard
        assert guard is not None  # set with _checking, in on_train_begin
        self._last_batch = batch
        step = self._epoch_start + batch
        # With steps_per_execution > 1, the steps since the last call ran in one execution:
        # a step due among them is checked at this boundary, the first chance.
        due = any(guard.schedule.due(s) for s in range(self._next, step + 1))
        self._next = step + 1
        if not due:
            return
        if guard.active:  # not switched off through the guard, cb.guard.disable()
            # Reading Callback.model syncs JAX's out-of-model state into the variables.
            self.model  # noqa: B018
            report = self._target.run(lambda: guard.check(step))
            self._figures = figures(report)
            if guard.should_stop:
                self.model.stop_training = True
            if self.verbose:
                self._print(step, report)
        self._checking = guard.active

    def _print(self, step: int, report: CheckReport) -> None:
        """A line per check, as Keras' own callbacks print theirs (``verbose=1``)."""
        count = len(report.params)
        if report.passed:
            what = (
                f"gradient check passed, {count} variable{'s' if count != 1 else ''}, "
                f"difference {report.difference:.1e} (tolerance {report.tolerance:.0e})"
            )
        else:
            what = f"gradient check {report.status.value.upper()}: " + ", ".join(
                report.failed or report.inconclusive or report.names
            )
        what += f", {report.duration_s:.2f} s"
        guard = self._guard
        if guard is not None and not guard.active:
            what += f"; {guard.schedule.max_checks} passing checks: GradCheckCallback switched off"
        elif guard is not None and guard.should_stop:
            what += "; stopping training"
        print(f"\nStep {step}: {what}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Add the epoch's last check's figures to its ``logs``; carry the global step count
        over to the next epoch (Keras restarts ``batch``).

        The figures (``gradcheck/difference``, ``gradcheck/failed``,
        ``gradcheck/difference/<variable>``: :func:`gradguard.figures.figures`) go into the
        dict that the callbacks listed after this one, and ``History``, read: Keras'
        ``TensorBoard`` callback writes them as ``epoch_gradcheck/...``. An epoch without a
        check adds nothing.
        """
        if self._figures and logs is not None:
            logs.update(self._figures)
        self._figures = {}
        if not self._checking:
            return
        if self._steps_per_epoch is not None:
            self._epoch_start += self._steps_per_epoch
        else:  # a dataset of unknown length: its last execution may have been shorter
            self._epoch_start += self._last_batch + self._per_execution
        self._next = self._epoch_start
        self._last_batch = -1

    # -- the probe ---------------------------------------------------------------------------

    def _probe_batch(self) -> tuple[Any, Any, Any]:
        """``(x, y, sample_weight)`` from the probe; a dataset gives its first batch."""
        probe = self.probe
        if _is_dataset(probe):
            if self._first_batch is not None:
                return self._first_batch
            try:
                element = next(iter(probe))
            except StopIteration:
                raise SettingsError(
                    "the probe dataset is empty: pass a tf.data.Dataset with at least one "
                    "batch, or arrays (x_probe, y_probe)"
                ) from None
            if not isinstance(element, tuple | list):
                element = (element,)
            probe = element
        if not isinstance(probe, tuple | list) or not 1 <= len(probe) <= 3:
            raise SettingsError(
                f"probe must be (x, y), (x, y, sample_weight), (x,) or a tf.data.Dataset of "
                f"such batches, got {type(probe).__name__}"
                + (f" of length {len(probe)}" if isinstance(probe, tuple | list) else "")
                + "; Keras callbacks never see the training batches, so the checks need one"
            )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(probe))
        if _is_dataset(self.probe):
            # Kept: each new iterator of a dataset that reshuffles advances its shuffle seed.
            self._first_batch = (x, y, sample_weight)
        return x, y, sample_weight

    def _probe_target(self, model: Any) -> Any:
        """The loss to check and its params, validated on the probe now rather than at the
        first check.

        Raises:
            InvalidParamsError: not a built Keras model, or no trainable variable.
            LossError: the model is not compiled (with a loss), or the probe's loss is not finite.
            SettingsError: the probe is malformed or does not fit the model.
        """
        if not isinstance(model, keras.Model):
            raise InvalidParamsError(
                f"GradCheckCallback needs a keras.Model, got {type(model).__qualname__}"
            )
        name = model.name
        if not getattr(model, "compiled", False):
            raise LossError(
                f"model {name!r} is not compiled: compile it with a loss "
                "(model.compile(optimizer, loss=...)) before fitting it with GradCheckCallback"
            )
        if not model.built:  # a subclassed model: fit would build it at the first step
            _build_from(model, self._probe_batch()[0])
        if not model.trainable_variables:
            raise InvalidParamsError(
                f"model {name!r} has no trainable variables (all its layers are frozen, or it "
                "holds no weights): there is no gradient to check; unfreeze some layers, or "
                "leave GradCheckCallback out"
            )
        batch = self._probe_batch()
        target = _fit_target(model, batch, self.training, self.precision, self._target)
        self._target = target
        x, y = batch[0], batch[1]
        try:
            value = target.evaluate_once()
        except GradGuardError:
            raise
        except Exception as exc:
            raise SettingsError(
                f"the probe batch does not fit model {name!r}, or its loss cannot be computed "
                f"on it (x shapes {_shapes(x)}, y shapes {_shapes(y)}): {_one_line(exc)}; "
                + self._probe_advice(y)
            ) from exc
        if not np.isfinite(value):
            raise LossError(
                f"the loss of model {name!r} on the probe batch is {value}, not finite: check "
                "the probe's values and the model's weights before training"
            )
        return target

    def _probe_advice(self, y: Any) -> str:
        """What to do about a probe the model's loss failed on, from what the probe lacks."""
        if _is_dataset(self.probe) and _looks_unbatched(self.probe):
            return (
                "the probe dataset gives single samples (its elements have no batch "
                "dimension): pass a batched dataset, probe=dataset.batch(n), as fit takes them"
            )
        if y is None:
            return (
                "the probe has no labels (probe=(x,)) and the model's loss needs them: pass "
                "probe=(x, y), or (x, y, sample_weight)"
            )
        return "pass a probe shaped like a training batch"


def _looks_unbatched(dataset: Any) -> bool:
    """Whether a ``tf.data.Dataset`` probe gives single samples (no batch dimension)."""
    from gradguard_tensorflow._fit import looks_unbatched

    return looks_unbatched(dataset)


def _build_from(model: Any, x: Any) -> None:
    """Build an unbuilt model's variables from the probe's shapes, as ``fit`` builds it.

    The model is called on symbolic tensors shaped like the probe's ``x``: Keras creates the
    variables without computing anything, exactly as the first training step would.

    Raises:
        InvalidParamsError: the model cannot be built from the probe.
    """
    try:
        symbolic = keras.tree.map_structure(
            lambda t: keras.KerasTensor(
                tuple(np.shape(t)), dtype=keras.backend.standardize_dtype(_dtype_of(t))
            ),
            x,
        )
        model(symbolic, training=False)
    except Exception as exc:
        raise InvalidParamsError(
            f"model {model.name!r} is not built, and building it from the probe batch (x "
            f"shapes {_shapes(x)}) failed: {_one_line(exc)}; pass a probe shaped like a "
            "training batch, or build the model before fit (model.build(input_shape), or "
            "call it once on a batch)"
        ) from exc
    if not model.built:
        raise InvalidParamsError(
            f"model {model.name!r} is not built after a call on the probe batch's shapes "
            f"({_shapes(x)}); build it before fit (model.build(input_shape), or call it once "
            "on a batch)"
        )


def _dtype_of(value: Any) -> Any:
    dtype = getattr(value, "dtype", None)
    return dtype if dtype is not None else np.asarray(value).dtype


def _one_line(exc: BaseException) -> str:
    """The error on one line, short: no colour codes, no Keras argument dump (which can
    print a whole sample)."""
    return one_line(exc, _VALUES.sub("[...]", str(exc).split("Arguments received by", 1)[0]))
