"""``gradguard.Guard``: periodic gradient checks for any training loop, one line per step.

A guard holds the configuration and the schedule; each check is the same core call as
:func:`gradguard.check`. After ``max_checks`` passing checks it switches itself off, so the
rest of training pays nothing but an attribute test per step.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Collection
from typing import Any, Literal

import attrs
import numpy as np

from gradguard.api import notify_event, run_one
from gradguard.context import CheckContext
from gradguard.engine import Settings
from gradguard.errors import SettingsError
from gradguard.kit.validate import check_loss_callable
from gradguard.logs.paths import log_file_path
from gradguard.plugins import get_plugin_manager
from gradguard.policy import DEFAULT_ON_FAILURE, ON_FAILURE, OnFailure, apply_policy
from gradguard.policy import validate_on_failure as _validate_on_failure
from gradguard.results import CheckReport
from gradguard.rotation import Coverage, Rotation

__all__ = ["DISABLE_ENV", "ON_FAILURE", "Guard", "Schedule", "disabled_by_environment"]

DISABLE_ENV = "GRADGUARD_DISABLE"
_STATE_VERSION = 1
_CHECK_OPTIONS = ("eps", "tolerance", "sample", "directions", "tensors")


def disabled_by_environment() -> bool:
    """Whether ``GRADGUARD_DISABLE`` asks every guard and callback to stay inert.

    Front doors read it once, when they start (a :class:`Guard` when it is built, a callback
    when ``fit`` starts), not at every step: the switch is meant for a run's environment
    (set before the process starts), and a guard already running is switched off with
    :meth:`Guard.disable`.
    """
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _positive_int(name: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "None or " if allow_none else ""
        raise SettingsError(f"{name} must be {kind}an int >= {minimum}, got {value!r}")


@attrs.frozen
class Schedule:
    """Which steps a training-loop front door checks, and when it stops.

    Steps are counted from 0. A check happens at ``start``, ``start + every``, ... until
    ``max_checks`` checks have passed (``None``: never stop).
    """

    every: int = 100
    start: int = 0
    max_checks: int | None = 3

    def __attrs_post_init__(self) -> None:
        _positive_int("every", self.every)
        _positive_int("start", self.start, minimum=0)
        _positive_int("max_checks", self.max_checks, allow_none=True)

    def due(self, step: int) -> bool:
        """Whether ``step`` is a checking step."""
        return step >= self.start and (step - self.start) % self.every == 0


def _check_seed(run_seed: int, index: int) -> int:
    """A distinct, reproducible seed for the ``index``-th check of a run."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


class Guard:
    """Gradient checks every ``every`` steps of a training loop, until ``max_checks`` pass.

    Example::

        guard = gg.Guard(loss, params, grad, every=100, max_checks=3, log_file="gc.jsonl")
        for step, batch in enumerate(loader):
            ...                      # the training step
            guard.step()             # a check every 100 calls; otherwise nothing

    ``loss`` is usually a closure over a fixed probe batch. Successive checks take
    coordinates not probed before (``report.coverage`` says how much has been covered) and,
    with ``tensors_per_check``, rotate over the tensors. A check never changes the
    parameters or the random state, so training with a guard is bit-identical to training
    without one.

    Args:
        loss: ``loss(params) -> scalar``.
        params: The parameters (anything an adapter claims: arrays, a model, ...).
        grad: The analytic gradient (callable or structure), or ``None`` for autodiff.
        every: Check every this many steps.
        start: The first step that is checked.
        max_checks: Switch off after this many passing checks (``None``: never).
        on_failure: What a check that does not pass (failed, or inconclusive) does:
            ``"stop"`` (default) warns with the table and sets :attr:`should_stop` for the
            loop to end on; ``"raise"`` raises its :class:`~gradguard.GradientCheckError`;
            ``"warn"`` warns and goes on; ``"log"`` only logs (see :mod:`gradguard.policy`).
            A check that cannot run (bad input) always raises.
        log_file: Append every check's record (and lifecycle events) to this JSON-lines file
            (a regular file; a FIFO or a device warns once and is not written).
        run_id: The id shared by this guard's records (default: a fresh random id).
        seed: Seed for the run's coordinate order and the checks' directions (default:
            random, recorded in each report).
        tensors_per_check: Check only this many tensors per check, rotating over them.
        ranks: In a distributed run, the process ranks that check (default: rank 0 only);
            ``"all"`` for every rank. A sharded model (DTensor parameters: FSDP2, tensor
            parallel) is always checked on every rank, collectively, whatever ``ranks`` says.
        source: The front door named in the records (a callback built on a guard sets its
            own, e.g. ``"lightning"``).
        **check_options: ``eps``, ``tolerance``, ``sample``, ``directions``, ``tensors``,
            as for :func:`gradguard.check`.

    ``GRADGUARD_DISABLE`` is read once, here: set in the environment before the guard is
    built, it makes the guard inert from the start.

    Raises:
        SettingsError: an option is out of range, or ``log_file`` is not a path (at
            construction, not in the loop).
    """

    log_file_path = staticmethod(log_file_path)
    """The validation of ``log_file`` that every front door shares (a callback built on a
    guard calls it in its own ``__init__``): see :func:`gradguard.logs.paths.log_file_path`."""

    def __init__(
        self,
        loss: Callable[..., Any],
        params: Any,
        grad: Any = None,
        *,
        every: int = 100,
        start: int = 0,
        max_checks: int | None = 3,
        on_failure: OnFailure = DEFAULT_ON_FAILURE,
        log_file: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        tensors_per_check: int | None = None,
        ranks: Collection[int] | Literal["all"] = (0,),
        source: str = "guard",
        **check_options: Any,
    ) -> None:
        unknown = sorted(set(check_options) - set(_CHECK_OPTIONS))
        if unknown:
            raise SettingsError(
                f"unknown Guard option(s) {unknown}; check options are {list(_CHECK_OPTIONS)}"
            )
        _validate_on_failure(on_failure)
        check_loss_callable(loss)
        _positive_int("tensors_per_check", tensors_per_check, allow_none=True)
        _positive_int("seed", seed, allow_none=True, minimum=0)
        self.schedule = Schedule(every=every, start=start, max_checks=max_checks)
        self._settings = Settings(**check_options)
        self.loss = loss
        self.params = params
        self.grad = grad
        self.on_failure = on_failure
        self.log_file = log_file_path(log_file)
        self.run_id = run_id if run_id is not None else uuid.uuid4().hex[:12]
        self.seed = seed if seed is not None else secrets.randbits(32)
        self.tensors_per_check = tensors_per_check
        self.ranks = ranks
        self.source = source
        self._rotation = Rotation(self.seed, tensors_per_check)
        self._reports: list[CheckReport] = []
        self._checks = 0  # over the whole run, resumed runs included (reports: this process)
        self._passed = 0
        self._steps = 0
        self._should_stop = False
        self._rank_checked = False
        self._active = True
        if disabled_by_environment():
            self.disable("environment")

    # -- state ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the guard still checks (it switches itself off after ``max_checks``)."""
        return self._active

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the checks made so far, oldest first."""
        return tuple(self._reports)

    @property
    def steps(self) -> int:
        """How many steps the guard has counted."""
        return self._steps

    @property
    def should_stop(self) -> bool:
        """Whether a check did not pass under ``on_failure="stop"``: the loop should end.

        A hand-written loop ends on it (``if guard.should_stop: break``), as Keras ends
        ``fit`` on ``model.stop_training``.
        """
        return self._should_stop

    def state_dict(self) -> dict[str, Any]:
        """The run's state, for a checkpoint: steps, checks, passes, run id, seed, coverage.

        A guard made with the same arguments and given this state by :meth:`load_state_dict`
        goes on as this one would have: the same schedule position, ``max_checks`` counted
        over both, the same run id in the records, and coordinates not probed before.
        """
        return {
            "version": _STATE_VERSION,
            "steps": self._steps,
            "checks": self._checks,
            "passed": self._passed,
            "active": self._active,
            "should_stop": self._should_stop,
            "run_id": self.run_id,
            "seed": self.seed,
            "coverage": self._rotation.coverage.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run that :meth:`state_dict` saved (after resuming from a checkpoint).

        A guard switched off by ``GRADGUARD_DISABLE`` stays off.

        Raises:
            SettingsError: ``state`` is not a guard's state.
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise SettingsError(
                "load_state_dict needs the dict a Guard's state_dict() returned (version "
                f"{_STATE_VERSION}), got {type(state).__name__}"
            )
        self._steps = int(state["steps"])
        self._checks = int(state["checks"])
        self._passed = int(state["passed"])
        self._active = self._active and bool(state["active"])
        self._should_stop = bool(state["should_stop"])
        self.run_id = str(state["run_id"])
        self.seed = int(state["seed"])
        self._rotation.coverage = Coverage.from_state_dict(self.seed, state["coverage"])

    def _context(self, step: int | None) -> CheckContext:
        return CheckContext(
            source=self.source, step=step, run_id=self.run_id, log_file=self.log_file
        )

    def disable(self, reason: str = "user", step: int | None = None) -> None:
        """Switch the guard off for good, recording why (and at which step) in the log."""
        if not self._active:
            return
        self._active = False
        notify_event(
            "guard_disabled",
            {"reason": reason, "checks": len(self._reports), "passed_checks": self._passed},
            self._context(self._steps if step is None else step),
        )

    # -- the loop ------------------------------------------------------------------------

    def step(self, step: int | None = None) -> CheckReport | None:
        """Count one training step; check when the schedule says so.

        Args:
            step: The step's number, when the loop keeps its own count (resumed training);
                by default the guard counts calls, from 0.

        Returns:
            The :class:`CheckReport` when this step was checked, else ``None``.
        """
        if not self._active:
            return None
        if not self._rank_checked:
            # Decided at the first step, once a distributed run has set its process group up.
            # Another rank goes quiet without a log record: ranks often share one log path.
            self._rank_checked = True
            if not self._rank_selected():
                self._active = False
                return None
        current = self._steps if step is None else step
        self._steps = current + 1
        if not self.schedule.due(current):
            return None
        return self.check(current)

    def check(self, step: int | None = None) -> CheckReport:
        """Make a check now, whatever the schedule (it counts towards ``max_checks``).

        Raises:
            GradientCheckError: the check did not pass and ``on_failure="raise"``
                (:class:`~gradguard.InconclusiveCheckError` when it could not judge).
            GradGuardError: the check could not run (bad input): always raised.
        """
        if not self._rank_checked:  # check() called directly, before any step()
            self._rank_checked = True
            self._rank_selected()  # for a sharded model: agrees the seed across ranks
        index = self._checks
        settings = attrs.evolve(self._settings, seed=_check_seed(self.seed, index))
        report = run_one(
            self.loss,
            self.params,
            self.grad,
            settings,
            self._context(step),
            self._rotation.turn(index),
        )
        self._reports.append(report)
        self._checks += 1
        if report.passed:
            self._passed += 1
            if self.schedule.max_checks is not None and self._passed >= self.schedule.max_checks:
                self.disable("passed", step)
        elif apply_policy(report, self.on_failure, step, stacklevel=3):
            self._should_stop = True
        return report

    def _rank_selected(self) -> bool:
        manager = get_plugin_manager()
        agreed = manager.hook.gradguard_collective_seed(params=self.params, seed=self.seed)
        if agreed is not None:
            # A sharded model: every rank checks (a check is a collective forward), with one
            # seed, so the run's coordinate order is the same on every rank too. The reports'
            # notes say the check was collective.
            self.seed = int(agreed)
            self._rotation = Rotation(self.seed, self.tensors_per_check)
            return True
        if self.ranks == "all":
            return True
        rank = manager.hook.gradguard_distributed_rank(params=self.params)
        return (0 if rank is None else int(rank)) in self.ranks
