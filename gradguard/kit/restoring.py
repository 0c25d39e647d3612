"""Restoring everything, even when one step of it fails.

A view's ``restore()`` puts back several things (tensors, buffers, RNG states, global modes).
One that raises must not leave the others undone: every step runs, and the first failure is
raised at the end, once the rest is back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["run_all"]


def run_all(steps: Iterable[Callable[[], None]]) -> BaseException | None:
    """Run every step, whatever the others do; return the first exception raised, if any.

    ``KeyboardInterrupt`` included: the caller re-raises what this returns once its own
    context (a grad mode, a lock) is back.
    """
    failure: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # keep restoring the rest, then the caller re-raises
            failure = failure or exc
    return failure
