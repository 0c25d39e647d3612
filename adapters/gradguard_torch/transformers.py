"""A Hugging Face ``Trainer`` callback: gradient checks every k optimizer steps of ``train()``.

::

    from gradguard_torch.transformers import GradCheckCallback

    trainer = Trainer(model=model, args=args, train_dataset=train,
                      callbacks=[GradCheckCallback(every=100, max_checks=3)])
    trainer.train()

The callback is a thin front door over :class:`gradguard.Guard`: the same schedule,
self-disabling, ``GRADGUARD_DISABLE``, JSON-lines records, rank-0-only checks and failure
policy (:mod:`gradguard.policy`). What it adds is what the Trainer does not give callbacks:

- **a batch**: the probe is ``probe=`` or the first batch the Trainer's ``train_dataloader``
  would give, read from its batch sampler's indices and its ``collate_fn`` with every random
  state saved and put back (iterating the loader itself would draw a seed and, under
  accelerate, synchronize random states: training would no longer be bit-identical);
- **the loss**: the Trainer's own ``compute_loss`` when the Trainer is known (``trainer=``,
  or found as the caller of the callback's first event), so an overridden ``compute_loss``,
  a ``compute_loss_func`` or label smoothing is what is checked; otherwise
  ``model(**probe).loss``;
- **dashboards**: each check's figures (:mod:`gradguard.figures`) go through ``trainer.log``,
  so every ``report_to`` integration (TensorBoard, W&B, MLflow) and ``state.log_history``
  get them at the check's step. (A callback cannot add them to the Trainer's next ``on_log``:
  the integrations are called before the user's callbacks.)

Checks run at ``on_step_begin``, which the Trainer calls once per optimizer step (not per
micro-batch under gradient accumulation), with ``state.global_step`` as the step and the
``.grad`` fields just cleared: the parameters are those the coming update starts from. Under
DDP rank 0 checks, and at each checking step every rank agrees (one all-reduce) on whether
a check failed, so all stop, or raise, at the same step. Importing this module imports
transformers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import transformers

from gradguard.engine import Settings
from gradguard.errors import LossError, SettingsError
from gradguard.figures import figures
from gradguard.guard import Guard, Schedule, disabled_by_environment
from gradguard.policy import DEFAULT_ON_FAILURE, OnFailure, apply_policy, validate_on_failure
from gradguard.results import CheckReport
from gradguard_torch._compat import calling_trainer

__all__ = ["GradCheckCallback"]


class GradCheckCallback(transformers.TrainerCallback):
    """Check the model's gradients every ``every`` optimizer steps, until ``max_checks`` pass.

    Args:
        probe: A batch of model inputs (a dict, as the Trainer's data collator gives them,
            labels included). Default: the first batch of the Trainer's ``train_dataloader``,
            taken once per ``train()`` without moving the loader on. Moved to the model's
            device.
        every: Check every this many optimizer steps (``state.global_step``).
        start: The first optimizer step that is checked.
        max_checks: Switch off after this many passing checks (``None``: never).
        on_failure: What a check that does not pass (failed, or inconclusive) does, as for
            every front door: ``"stop"`` (default: a ``GradientCheckWarning`` with the table,
            and ``control.should_training_stop`` on every rank: the optimizer step about to
            run is the last), ``"raise"`` (its ``GradientCheckError`` leaves
            ``trainer.train()`` on every rank), ``"warn"`` (training goes on) or ``"log"``.
        log_file: Append every check's record to this JSON-lines file (``source`` is
            ``"transformers"``).
        run_id: The id of the run's records (default: a fresh one per ``train()``).
        seed: Seed of the run's probes (default: random, recorded in each report).
        trainer: The ``Trainer``, for its ``compute_loss`` and its ``log``. Optional: the
            callback finds the Trainer that calls it; pass it when a subclass calls
            callbacks from elsewhere.
        tensors_per_check: Check only this many tensors per check, rotating over them.
        **check_options: ``eps``, ``tolerance``, ``sample``, ``directions``, ``tensors``.

    Raises:
        SettingsError: an option is out of range (at construction).
    """

    def __init__(
        self,
        probe: Mapping[str, Any] | None = None,
        *,
        every: int = 100,
        start: int = 0,
        max_checks: int | None = 3,
        on_failure: OnFailure = DEFAULT_ON_FAILURE,
        log_file: str | None = None,
        run_id: str | None = None,
        seed: int | None = None,
        trainer: transformers.Trainer | None = None,
        tensors_per_check: int | None = None,
        **check_options: Any,
    ) -> None:
        super().__init__()
        if probe is not None and not isinstance(probe, Mapping):
            raise SettingsError(
                f"probe must be a dict of model inputs (as the Trainer's data collator gives "
                f"them, labels included), got {type(probe).__name__}"
            )
        if trainer is not None and not isinstance(trainer, transformers.Trainer):
            raise SettingsError(f"trainer must be a transformers.Trainer, got {type(trainer)}")
        self.on_failure = validate_on_failure(on_failure)
        self.schedule = Schedule(every=every, start=start, max_checks=max_checks)
        Settings(**check_options)  # validated now, not in the first check
        self.probe = probe
        self.trainer = trainer
        self.log_file = Guard.log_file_path(log_file)
        self.run_id, self.seed, self.tensors_per_check = run_id, seed, tensors_per_check
        self.check_options = check_options
        self._guard: Guard | None = None
        self._checking = False  # some rank still checks: the ranks agreed on it
        self._trainer: transformers.Trainer | None = None
        self.stopped_at: int | None = None
        self.figures: dict[str, float] = {}
        """The last check's dashboard figures (:func:`gradguard.figures.figures`)."""

    @property
    def reports(self) -> tuple[CheckReport, ...]:
        """The reports of the current (or last) ``train()``'s checks (on the checking rank)."""
        return () if self._guard is None else self._guard.reports

    @property
    def active(self) -> bool:
        """Whether the callback still checks."""
        return self._guard is not None and self._checking

    @property
    def guard(self) -> Guard | None:
        """The :class:`~gradguard.Guard` of the current (or last) ``train()``."""
        return self._guard

    # -- Trainer events --------------------------------------------------------------------

    def on_train_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: torch.nn.Module | None = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        """A fresh guard per ``train()``, on the probe (taken now, before the first batch).

        Raises:
            SettingsError: no probe was given and the loader's first batch cannot be read
                without iterating it (an ``IterableDataset``).
        """
        if model is None:
            raise SettingsError("the Trainer gave GradCheckCallback no model")
        self._trainer = self.trainer if self.trainer is not None else calling_trainer()
        if disabled_by_environment():  # the guard is off from the start: no probe is read
            loss: Callable[[torch.nn.Module], Any] = _never_evaluated
        else:
            batch = self.probe if self.probe is not None else first_batch(train_dataloader)
            loss = _loss(_to_device(batch, _device_of(model)), self._trainer)
        self._guard = Guard(
            loss,
            model,
            every=self.schedule.every,
            start=self.schedule.start,
            max_checks=self.schedule.max_checks,
            on_failure="log",  # applied below, once the ranks have agreed
            log_file=self.log_file,
            run_id=self.run_id,
            seed=self.seed,
            tensors_per_check=self.tensors_per_check,
            source="transformers",
            **self.check_options,
        )
        self._checking, self.stopped_at, self.figures = self._guard.active, None, {}

    def on_step_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Check the parameters the coming optimizer step updates, when due; act on every rank."""
        if not self._checking:  # switched off on every rank: the rest costs this test
            return
        guard = self._guard
        assert guard is not None  # made in on_train_begin
        step = int(state.global_step)
        if not self.schedule.due(step):
            return
        report = guard.step(step)  # None on a rank that does not check
        if report is not None:
            self._publish(report)
        failed, self._checking = _agree(report is not None and not report.passed, guard.active)
        if not failed:
            return
        if self.on_failure == "raise":
            report = _broadcast(report)  # every rank raises, so none waits in a collective
        elif report is None:  # another rank checked, and said why
            if self.on_failure == "stop":
                self._stop(control, step)
            return
        if apply_policy(report, self.on_failure, step, stacklevel=2):
            self._stop(control, step)

    def _publish(self, report: CheckReport) -> None:
        """The check's figures into the Trainer's logs: ``report_to`` and ``log_history``."""
        self.figures = figures(report)
        if self._trainer is not None:
            self._trainer.log(dict(self.figures))  # Trainer.log adds "epoch" to what it gets

    def _stop(self, control: transformers.TrainerControl, step: int) -> None:
        control.should_training_stop = True
        self.stopped_at = step
        self._checking = False


# -- the probe -------------------------------------------------------------------------------


def first_batch(dataloader: Any) -> Any:
    """The first batch ``dataloader`` would give, without moving it or any random state on.

    The batch is collated from the first indices of the loader's batch sampler, drawn as
    ``iter(dataloader)`` draws them (a base seed first, then the sampler's). The global
    random states (torch CPU and CUDA, Python's, NumPy's) and the samplers' attributes and
    generators are saved before and put back after: a ``RandomSampler`` without a generator
    draws its seed from torch's global generator, and accelerate's ``SeedableRandomSampler``
    makes its generator on first use.

    Raises:
        SettingsError: there is no loader, or its batches are not drawn by index (an
            ``IterableDataset``): pass ``probe=`` then.
    """
    if dataloader is None:
        raise SettingsError(
            "GradCheckCallback got no train_dataloader from the Trainer: pass probe=batch "
            "(a dict of model inputs, labels included)"
        )
    dataset = getattr(dataloader, "dataset", None)
    sampler = getattr(dataloader, "batch_sampler", None)
    collate = getattr(dataloader, "collate_fn", None)
    if isinstance(dataset, torch.utils.data.IterableDataset) or sampler is None or collate is None:
        raise SettingsError(
            f"GradCheckCallback cannot read the first batch of a {type(dataloader).__name__} "
            "over an iterable dataset without moving it on: pass probe=batch (a dict of "
            "model inputs, labels included)"
        )
    with _random_states_kept(sampler):
        indices = iter(sampler)
        # What iter(dataloader) draws between making the sampler's iterator and its first
        # batch (torch 2.13 `_BaseDataLoaderIter`): a sampler seeded from torch's global
        # generator then sees the state it sees in training.
        torch.empty((), dtype=torch.int64).random_(generator=getattr(dataloader, "generator", None))
        try:
            first = next(indices)
        except StopIteration:
            raise SettingsError(
                "the training dataset is empty: GradCheckCallback has no batch to check on"
            ) from None
        finally:
            close = getattr(indices, "close", None)
            if close is not None:  # a generator's finally runs now, inside the saved state
                close()
    return collate([dataset[i] for i in first])  # type: ignore[index]


def _samplers(root: Any, depth: int = 4) -> Iterator[Any]:
    """``root`` and the samplers it wraps (``.sampler``, ``.batch_sampler``), each once."""
    seen: set[int] = set()
    todo = [(root, 0)]
    while todo:
        obj, level = todo.pop()
        if obj is None or id(obj) in seen or not hasattr(obj, "__dict__"):
            continue
        seen.add(id(obj))
        yield obj
        if level < depth:
            todo.extend(
                (getattr(obj, name, None), level + 1) for name in ("sampler", "batch_sampler")
            )


@contextlib.contextmanager
def _random_states_kept(sampler: Any) -> Iterator[None]:
    """Every random state reading a batch sampler may move, put back bit for bit."""
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    py_state = random.getstate()
    np_state = np.random.get_state()
    saved = []
    for obj in _samplers(sampler):
        attributes = dict(vars(obj))
        generators = [
            (g, g.get_state()) for g in attributes.values() if isinstance(g, torch.Generator)
        ]
        saved.append((obj, attributes, generators))
    try:
        yield
    finally:
        for obj, attributes, generators in saved:
            vars(obj).clear()
            vars(obj).update(attributes)
            for generator, state in generators:
                generator.set_state(state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.random.set_rng_state(cpu)


def _never_evaluated(model: torch.nn.Module) -> Any:
    raise AssertionError("a guard disabled by GRADGUARD_DISABLE never evaluates its loss")


def _device_of(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    """The batch with its tensors on ``device`` (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _loss(batch: Any, trainer: transformers.Trainer | None) -> Callable[[torch.nn.Module], Any]:
    """The loss training minimizes on ``batch``: the Trainer's ``compute_loss`` when known."""
    if not isinstance(batch, Mapping):
        raise SettingsError(
            f"the probe batch is a {type(batch).__name__}; GradCheckCallback calls "
            "model(**batch): give probe= a dict of model inputs, labels included"
        )
    if trainer is not None:

        def trainer_loss(model: torch.nn.Module) -> Any:
            # A copy each time: compute_loss pops "labels" for label smoothing.
            return trainer.compute_loss(model, dict(batch))

        return trainer_loss

    def model_loss(model: torch.nn.Module) -> Any:
        outputs = model(**batch)
        loss = getattr(outputs, "loss", None)
        if loss is None and isinstance(outputs, tuple | list) and outputs:
            loss = outputs[0] if "labels" in batch else None
        if loss is None:
            raise LossError(
                f"{type(model).__name__}(**probe) returned no loss (probe keys: "
                f"{sorted(batch)}): give the probe its labels, or pass trainer= so that the "
                "Trainer's compute_loss is checked"
            )
        return loss

    return model_loss


# -- ranks ------------------------------------------------------------------------------------


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _agree(failed: bool, checking: bool) -> tuple[bool, bool]:
    """Whether any rank's check failed, and whether any rank still checks (one all-reduce)."""
    if not _distributed():
        return failed, checking
    flags = torch.tensor([int(failed), int(checking)], device=_collective_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _broadcast(report: CheckReport | None) -> CheckReport:
    """Rank 0's report on every rank."""
    if _distributed():
        box = [report]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        report = box[0]
    assert report is not None
    return report
