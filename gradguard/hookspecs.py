"""The hooks a gradguard plugin can implement.

Every hook is called with keyword arguments only, so a plugin may accept a subset of them.
Implement a hook by decorating a function named exactly like it with
:data:`gradguard.hookimpl`; ``docs/plugins.md`` documents each one (a test keeps it in step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gradguard.context import CheckContext
    from gradguard.kit.contract import Adapter
    from gradguard.results import CheckReport

__all__ = [
    "gradguard_adapter_claim",
    "gradguard_check_completed",
    "gradguard_collective_seed",
    "gradguard_distributed_rank",
    "gradguard_lifecycle_event",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("gradguard")


@hookspec(firstresult=True)
def gradguard_adapter_claim(params: object) -> Adapter | None:
    """Claim a params container: return an :class:`~gradguard.kit.contract.Adapter` for it, or None.

    First result wins: the first plugin to return an adapter handles the check. Built-in
    adapters are ``trylast``, so a third-party plugin can take over any container.
    An implementation must not import its framework to answer: if the user holds one of its
    objects, the framework is already in ``sys.modules``.

    Args:
        params: The object the user passed as ``params`` (an array, a model, a dict, ...).
    """


@hookspec
def gradguard_check_completed(report: CheckReport, context: CheckContext) -> None:
    """Observe a finished check: write it to a log, a dashboard, a tracker.

    Called once per check, after every parameter has been restored. Every implementation
    is called; one that raises is reported as a warning and does not stop the others.

    Args:
        report: The check's :class:`~gradguard.results.CheckReport`.
        context: Where the check ran (:class:`~gradguard.context.CheckContext`): the front
            door, the training step, the run id, the log file asked for.
    """


@hookspec
def gradguard_lifecycle_event(event: str, details: dict[str, Any], context: CheckContext) -> None:
    """Observe a front door changing state, such as a guard switching itself off.

    Called like ``gradguard_check_completed`` (every implementation; one that raises only
    warns). Events so far: ``"guard_disabled"``, with ``details["reason"]`` (``"passed"``:
    ``max_checks`` checks passed; ``"environment"``: ``GRADGUARD_DISABLE`` is set;
    ``"user"``: ``disable()`` was called) and ``details["checks"]`` (checks made so far).

    Args:
        event: The event's name.
        details: JSON-ready fields describing it.
        context: Where it happened (:class:`~gradguard.context.CheckContext`).
    """


@hookspec(firstresult=True)
def gradguard_distributed_rank(params: object) -> int | None:
    """The rank of this process in a distributed run that ``params`` takes part in, or None.

    First result wins. A training-loop front door checks on rank 0 only by default and asks
    this hook once, at its first step. An adapter answers for its own framework (for PyTorch,
    ``torch.distributed.get_rank()`` when a process group is initialized); ``None`` means
    not distributed, treated as rank 0.

    Args:
        params: The parameters the front door checks.
    """


@hookspec(firstresult=True)
def gradguard_collective_seed(params: object, seed: int) -> int | None:
    """For params that every rank checks together (a sharded model): the seed all ranks use.

    First result wins. ``None`` means ``params`` is checked by each process on its own (the
    usual case). A model sharded over processes (PyTorch FSDP2 or tensor parallel: DTensor
    parameters) is checked collectively: every rank calls the check, and the random choices
    must agree, so an adapter answers with one rank's seed (rank 0's), broadcast. The call is
    then itself collective. ``gradguard.check`` asks before every check; a training-loop
    front door asks at its first step and, when the answer is not ``None``, checks on every
    rank instead of its default ranks (rank 0 only would deadlock the collective forward).

    Args:
        params: The parameters about to be checked.
        seed: This process's seed (drawn at random when the user gave none).
    """
