"""A PyTorch Lightning callback: gradient checks every k steps of ``trainer.fit``.

::

    from gradguard_torch.lightning import GradCheckCallback

    check = GradCheckCallback(probe=next(iter(train_loader)), every=100, max_checks=3)
    trainer = lightning.Trainer(callbacks=[check])
    trainer.fit(model, train_loader)

The callback is a thin front door over :class:`gradguard.Guard`: the same schedule,
self-disabling, ``GRADGUARD_DISABLE``, logs and rank-0-only checks. The loss is either given
(``loss=lambda module: ...``) or the module's own ``training_step`` on a fixed probe batch
(``probe=batch``), with ``self.log`` silenced during the check's evaluations so the probe's
values never reach the trainer's logs. Importing this module imports Lightning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from gradguard.engine import Settings
from gradguard.errors import LossError, SettingsError
from gradguard.guard import Guard, Schedule
from gradguard.results import CheckReport

__all__ = ["GradCheckCallback"]

ON_FAILURE = ("warn", "log", "stop", "raise")
# "stop" is the guard's "log" plus trainer.should_stop, set by the callback.
_GUARD_ON_FAILURE: dict[str, Literal["raise", "warn", "log"]] = {
    "warn": "warn",
    "log": "log",
    "stop": "log",
    "raise": "raise",
}


@contextlib.contextmanager
def _quiet_logging(module: torch.nn.Module) -> Iterator[None]:
    """``self.log`` and ``self.log_dict`` do nothing while a probe evaluation runs."""

    def ignore(*_: Any, **__: Any) -> None:
        return None

    # Instance attributes shadowing the methods, removed below.
    setattr(module, "log", ignore)  # noqa: B010  # a plain assignment does not type-check
    setattr(module, "log_dict", ignore)  # noqa: B010
    try:
        yield
    finally:
        del module.log
        del module.log_dict


def _training_step_loss(probe: Any) -> Callable[[torch.nn.Module], torch.Tensor]:
    def loss(module: torch.nn.Module) -> torch.Tensor:
        with _quiet_logging(module):
            out = module.training_step(probe, 0)  # type: ignore[operator]
        if isinstance(out, dict):
            out = out.get("loss")
        if not isinstance(out, torch.Tensor):
            raise LossError(
                f"training_step returned {type(out).__name__} on the probe batch; the callback "
                "needs the loss tensor (or a dict with 'loss'): pass loss=lambda module: ..."
            )
        return out

    return loss


class GradCheckCallback(pl.Callback):
    """Check the module's gradients every ``every`` training batches, until ``max_checks`` pass.

    Args:
        loss: ``loss(module) -> scalar tensor`` on a fixed probe batch. Give this or ``probe``.
        probe: A batch for the module's own ``training_step(probe, 0)``.
        every: Check every this many training batches.
        start: The first batch that is checked.
        max_checks: Switch off after this many passing checks (``None``: never).
        on_failure: ``"warn"`` (a GradientCheckWarning with the table), ``"log"`` (only the
            log), ``"stop"`` (``trainer.should_stop``: a graceful stop) or ``"raise"``.
        log_file: Append every check's record to this JSON-lines file.
        run_id: The id of the run's records (default: random).
        seed: Seed of the run's probes (default: random, recorded in each report).
        **check_options: ``eps``, ``tolerance``, ``sample``, ``directions``, ``tensors``.

    Raises:
        SettingsError: an option is out of range (at construction).
    """

    def __init__(
        self,
        loss: Callable[[torch.nn.Module], Any] | None = None,
        *,
        probe: Any = None,
        every: int = 100,
        start: int = 0,
        max_checks: int | None = 3,
        on_failure: Literal["warn", "log", "stop", "raise"] = "warn",
        log_file: str | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        **check_options: Any,
    ) -> None:
        super().__init__()
        if (loss is None) == (probe is None):
            raise SettingsError(
                "GradCheckCallback needs a loss: loss=lambda module: ... on a probe batch, "
                "or probe=batch for the module's own training_step (one of the two)"
            )
        if on_failure not in ON_FAILURE:
            raise SettingsError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        Schedule(every=every, start=start, max_checks=max_checks)  # validates now
        Settings(**check_options)
        self.loss = loss if loss is not None else _training_step_loss(probe)
        self.every, self.start, self.max_checks = every, start, max_checks
        self.on_failure = on_failure
        self.log_file, self.run_id, self.seed = log_file, run_id, seed
        self.check_options = check_options
        self._guard: Guard | None = None

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the current (or last) fit's checks."""
        return () if self._guard is None else self._guard.reports

    @property
    def active(self) -> bool:
        """Whether the callback still checks."""
        return self._guard is not None and self._guard.active

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fresh guard per fit, so one callback instance can be reused."""
        self._guard = Guard(
            self.loss,
            pl_module,
            every=self.every,
            start=self.start,
            max_checks=self.max_checks,
            on_failure="raise"
            if self.on_failure == "raise"
            else "warn"
            if self.on_failure == "warn"
            else "log",
            log_file=self.log_file,
            run_id=self.run_id,
            seed=self.seed,
            source="lightning",
            **self.check_options,
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the batch; check when due; stop training gracefully if asked to."""
        if self._guard is None:
            return
        report = self._guard.step()
        if report is not None and not report.passed and self.on_failure == "stop":
            trainer.should_stop = True
