"""A PyTorch Lightning callback: gradient checks every k steps of ``trainer.fit``.

::

    from gradguard_torch.lightning import GradCheckCallback

    check = GradCheckCallback(probe=next(iter(train_loader)), every=100, max_checks=3)
    trainer = lightning.Trainer(callbacks=[check])
    trainer.fit(model, train_loader)

The callback is a thin front door over :class:`gradguard.Guard`: the same schedule,
self-disabling, ``GRADGUARD_DISABLE``, logs, rank-0-only checks and failure policy
(:mod:`gradguard.policy`). The loss is either given (``loss=lambda module: ...``) or the
module's own ``training_step`` on a fixed probe batch (``probe=batch``), with ``self.log``
silenced during the check's evaluations so the probe's values never reach the trainer's logs.

Under DDP only rank 0 checks, but every rank must stop (or raise) at the same batch, or the
others would wait forever in the next collective: at each checking step the ranks agree,
through ``trainer.strategy.reduce_boolean_decision`` as Lightning's ``EarlyStopping`` does,
whether a check failed and whether any rank still checks. Importing this module imports
Lightning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from gradguard.engine import Settings
from gradguard.errors import LossError, SettingsError
from gradguard.figures import figures
from gradguard.guard import Guard, Schedule
from gradguard.policy import DEFAULT_ON_FAILURE, OnFailure, apply_policy, validate_on_failure
from gradguard.results import CheckReport

__all__ = ["GradCheckCallback"]


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
        on_failure: What a check that does not pass (failed, or inconclusive) does, as for
            every front door: ``"stop"`` (default: a ``GradientCheckWarning`` with the table
            that says training stops, and ``trainer.should_stop`` on every rank), ``"raise"``
            (its ``GradientCheckError`` leaves ``trainer.fit`` on every rank), ``"warn"`` (the
            warning; training goes on) or ``"log"`` (the log record only).
        log_file: Append every check's record to this JSON-lines file.
        run_id: The id of the run's records (default: a fresh one per fit; a fit resumed from
            a checkpoint keeps the run's).
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
        on_failure: OnFailure = DEFAULT_ON_FAILURE,
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
        self.on_failure = validate_on_failure(on_failure)
        self.schedule = Schedule(every=every, start=start, max_checks=max_checks)
        Settings(**check_options)  # validated now, not in the first check
        self.loss = loss if loss is not None else _training_step_loss(probe)
        self.every, self.start, self.max_checks = every, start, max_checks
        self.log_file, self.run_id, self.seed = log_file, run_id, seed
        self.check_options = check_options
        self._guard: Guard | None = None
        self._batches = 0  # training batches seen in this run, resumed runs included
        self._checking = False  # some rank still checks: the ranks agreed on it
        self._restored: dict[str, Any] | None = None  # from a checkpoint, for on_train_start
        self.stopped_at: int | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint (two callbacks, two keys)."""
        return self._generate_state_key(every=self.every, start=self.start, log=self.log_file)

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the current (or last) fit's checks (on the checking rank)."""
        return () if self._guard is None else self._guard.reports

    @property
    def active(self) -> bool:
        """Whether the callback still checks."""
        return self._guard is not None and self._checking

    @property
    def guard(self) -> Guard | None:
        """The :class:`~gradguard.Guard` of the current (or last) fit; ``None`` before."""
        return self._guard

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The run's state for a checkpoint: batches counted, checks, passes, run id, coverage."""
        if self._guard is None:
            return {} if self._restored is None else dict(self._restored)
        return {
            "batches": self._batches,
            "checking": self._checking,
            "stopped_at": self.stopped_at,
            "guard": self._guard.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the run a checkpoint saved (applied when the resumed fit starts)."""
        self._restored = dict(state_dict) if state_dict else None

    # -- Lightning hooks -------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fresh guard per fit (one instance serves several), or the checkpoint's run."""
        self._guard = Guard(
            self.loss,
            pl_module,
            every=self.every,
            start=self.start,
            max_checks=self.max_checks,
            on_failure="log",  # the policy is applied below, once the ranks have agreed
            log_file=self.log_file,
            run_id=self.run_id,
            seed=self.seed,
            source="lightning",
            **self.check_options,
        )
        self._batches, self._checking, self.stopped_at = 0, True, None
        restored, self._restored = self._restored, None
        if restored:
            self._batches = int(restored["batches"])
            self._checking = bool(restored["checking"])
            self.stopped_at = restored["stopped_at"]
            self._guard.load_state_dict(restored["guard"])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the batch; check when due; act on a failure on every rank alike."""
        if not self._checking:  # switched off on every rank: the rest costs this test
            return
        guard = self._guard
        assert guard is not None  # made in on_train_start
        step = self._batches
        self._batches += 1
        if not self.schedule.due(step):
            return
        report = guard.step(step)  # None on a rank that does not check
        if report is not None:
            # Only this rank logs: no sync_dist (the other ranks would wait in it).
            pl_module.log_dict(figures(report), on_step=True, on_epoch=False, rank_zero_only=True)
        strategy = trainer.strategy
        failed = strategy.reduce_boolean_decision(
            report is not None and not report.passed, all=False
        )
        self._checking = strategy.reduce_boolean_decision(guard.active, all=False)
        if not failed:
            return
        if self.on_failure == "raise":
            # Every rank raises the checking rank's error, so none waits in a collective.
            report = strategy.broadcast(report, src=0)
            assert report is not None
        elif report is None:  # another rank checked, and said why
            if self.on_failure == "stop":
                self._stop(trainer, step)
            return
        if apply_policy(report, self.on_failure, step, stacklevel=2):
            self._stop(trainer, step)

    def _stop(self, trainer: pl.Trainer, step: int) -> None:
        trainer.should_stop = True
        self.stopped_at = step
        self._checking = False
