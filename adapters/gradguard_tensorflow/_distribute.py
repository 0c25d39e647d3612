"""Checking a model whose variables a ``tf.distribute`` strategy mirrors.

A check must evaluate the loss once, as the un-distributed model would compute it, on every
replica's shared weights. Under ``with strategy.scope()`` (cross-replica context) two things
stand in the way: Keras scales the losses it averages over the batch, and the regularization
losses, by ``1 / num_replicas_in_sync`` (it asks ``tf.distribute.get_strategy()``, so a check
would see half the loss and half the gradient with two replicas), and a ``MirroredVariable``
refuses to give its ``handle``. Outside the
scope neither happens: the variables read as their primary copies, and the loss is the
un-distributed one. The scope is thread-local (like Keras' own scopes), so
:func:`outside_strategy` runs a check in a helper thread when the caller is inside one;
the caller waits for it, so nothing runs concurrently with training.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.errors import InvalidParamsError

__all__ = ["outside_strategy", "require_no_strategy"]

T = TypeVar("T")


def _in_replica_context() -> bool:
    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


def outside_strategy(function: Callable[[], T]) -> T:
    """``function()``, called where no ``tf.distribute`` strategy is in scope.

    Called directly when none is (the usual case: ``model.fit`` called outside
    ``strategy.scope()``), else in a helper thread, which the scope does not reach; the
    caller waits for it, and its exception, if any, is raised here.

    Raises:
        InvalidParamsError: called in a replica context (inside ``strategy.run``), where a
            check would run once per replica.
    """
    if not tf.distribute.has_strategy():
        return function()
    if _in_replica_context():
        raise InvalidParamsError(
            "a gradient check cannot run inside strategy.run (a replica context): it would run "
            "once per replica; run it from the training loop, outside strategy.run"
        )
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gradguard") as pool:
        return pool.submit(function).result()


def require_no_strategy() -> None:
    """Refuse to open a check inside a strategy's scope, with the fix.

    Raises:
        InvalidParamsError: a ``tf.distribute`` strategy is in scope.
    """
    if not tf.distribute.has_strategy():
        return
    where = "strategy.run" if _in_replica_context() else "`with strategy.scope():`"
    strategy = type(tf.distribute.get_strategy()).__name__
    raise InvalidParamsError(
        f"gradguard.check was called inside {where} of a {strategy}: there Keras scales "
        "the loss by 1/num_replicas_in_sync and mirrored variables hide their storage; call it "
        "outside the scope (the variables are read as their primary copies, and the loss is "
        "the un-distributed one), or use GradCheckCallback, which does"
    )
