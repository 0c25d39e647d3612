"""``GradCheckCallback`` for Keras 3 on any backend (TensorFlow, JAX, PyTorch).

A thin front door over :class:`gradguard.Guard`, as the TensorFlow adapter's callback is; the
checks go through Keras's stateless API (:mod:`gradguard_keras._stateless`), so they work
wherever Keras does. Under JAX, ``fit`` keeps the variables' values outside the model between
steps; reading ``Callback.model`` syncs them back (Keras's ``jax_state_sync``), so a check sees
the weights the coming step starts from.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import keras  # type: ignore[import-untyped]  # Keras ships no type information

from gradguard.guard import Guard
from gradguard.results import CheckReport
from gradguard_keras._stateless import KerasProbe

__all__ = ["GradCheckCallback"]


class GradCheckCallback(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Gradient checks during ``model.fit`` on any Keras backend, every ``every`` steps.

    Example::

        os.environ["KERAS_BACKEND"] = "jax"   # or "torch", "tensorflow", before importing keras
        from gradguard_keras import GradCheckCallback

        cb = GradCheckCallback(probe=(x_probe, y_probe), every=100, max_checks=3)
        model.fit(x, y, callbacks=[cb])

    The loss checked is ``fit``'s on the probe batch (``stateless_call`` then
    ``stateless_compute_loss``), the gradient the backend's autodiff of it; nothing is written,
    so training is bit-identical with and without the callback. Run-time state is reset in
    ``on_train_begin``.

    Args:
        probe: ``(x, y)`` or ``(x, y, sample_weight)``: the batch the checks use.
        every: Check every this many training steps (counted over epochs, from 0).
        start: The first step checked.
        max_checks: Switch off after this many passing checks (``None``: never).
        on_failure: ``"raise"``, ``"warn"``, or ``"log"``, as for :class:`gradguard.Guard`;
            ``"stop"`` warns and sets ``model.stop_training``.
        log_file: Append every check's record to this JSON-lines file (``source="keras"``).
        seed: Seed of the checks' random choices (default: fresh, recorded in each report).
        training: The ``training`` flag of the checked forward passes.
        **check_options: ``eps``, ``tolerance``, ``sample``, ``directions``, ``tensors``.
    """

    def __init__(
        self,
        probe: tuple[Any, ...],
        *,
        every: int = 100,
        start: int = 0,
        max_checks: int | None = 3,
        on_failure: Literal["raise", "warn", "stop", "log"] = "raise",
        log_file: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        training: bool = False,
        **check_options: Any,
    ) -> None:
        super().__init__()
        from gradguard.errors import SettingsError

        if on_failure not in ("raise", "warn", "stop", "log"):
            raise SettingsError(
                f"on_failure must be 'raise', 'warn', 'stop' or 'log', got {on_failure!r}"
            )
        if not isinstance(probe, tuple | list) or not 2 <= len(probe) <= 3:
            raise SettingsError("probe must be (x, y) or (x, y, sample_weight)")
        self.probe = tuple(probe)
        self.every, self.start, self.max_checks = every, start, max_checks
        self.on_failure = on_failure
        self.log_file = log_file
        self.seed = seed
        self.training = training
        self.check_options = check_options
        Guard(
            lambda _: 0.0, None, every=every, start=start, max_checks=max_checks, **check_options
        )  # validates the options here, not in fit
        self._guard: Guard | None = None
        self._epoch_start = 0
        self._steps_per_epoch: int | None = None

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the checks of the current (or last) ``fit``."""
        return () if self._guard is None else self._guard.reports

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Reset the run-time state: a new guard per ``fit``."""
        self._epoch_start = 0
        self._steps_per_epoch = (self.params or {}).get("steps")
        x, y, *rest = self.probe
        probe = KerasProbe(self.model, x, y, rest[0] if rest else None, self.training)
        self._guard = Guard(
            probe.loss,
            probe,
            None,
            every=self.every,
            start=self.start,
            max_checks=self.max_checks,
            on_failure="warn" if self.on_failure == "stop" else self.on_failure,
            log_file=self.log_file,
            seed=self.seed,
            source="keras",
            **self.check_options,
        )

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Check the weights the coming step starts from, when the schedule says so."""
        guard = self._guard
        if guard is None or not guard.active:
            return
        step = self._epoch_start + batch
        if not guard.schedule.due(step):
            return
        self.model  # noqa: B018  # reading it syncs JAX's out-of-model state into the variables
        report = guard.check(step)
        if not report.passed and self.on_failure == "stop":
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Carry the step count over to the next epoch (Keras restarts ``batch``)."""
        if self._steps_per_epoch is not None:
            self._epoch_start += self._steps_per_epoch
