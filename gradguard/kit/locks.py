"""One check at a time per parameter: checks of the same tensors from two threads never interleave.

A check perturbs the user's tensors in place (or reads them as its starting point) and writes
the saved originals back. Two checks of the same tensors at once would each save what the
other perturbed and write that back, changing the parameters for good. So each check holds
its tensors' *keys* (what identifies their memory: an array's base buffer, a torch storage,
a variable) from before its view takes its snapshot until the view has restored everything;
a second check of any of the same keys waits for the first to finish.

A check that asks for keys its own thread already holds (a loss that calls
``gradguard.check`` on the parameters being checked) cannot wait for itself: it gets a
:class:`~gradguard.errors.ConcurrentCheckError`.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from gradguard.errors import ConcurrentCheckError
from gradguard.kit.tree import walk

__all__ = ["default_keys", "release", "try_claim", "wait_free"]

_lock = threading.Condition()
_holders: dict[Hashable, int] = {}  # key -> ident of the thread whose check holds it
_WAIT_S = 0.1  # a waiting main thread wakes this often, so Ctrl-C is never held off for long


def _base(array: np.ndarray[Any, Any]) -> object:
    """The object that owns an array's memory: views of one array share it."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner


def default_keys(params: object) -> frozenset[Hashable]:
    """Keys for params an adapter has no better answer for.

    NumPy arrays (at any depth of dicts, lists and tuples) by the object that owns their
    memory, so a view and its base are one key; any other leaf, a model for instance, by its
    identity.
    """
    keys: set[Hashable] = set()
    for _, leaf in walk(params, ()):
        owner = _base(leaf) if isinstance(leaf, np.ndarray) else leaf
        keys.add(("object", id(owner)))
    return frozenset(keys)


def _conflict(keys: frozenset[Hashable], me: int) -> bool:
    """Whether another thread holds a key; raise if this thread does."""
    busy = False
    for key in keys:
        holder = _holders.get(key)
        if holder == me:
            raise ConcurrentCheckError(
                "a check of these parameters is already running in this thread (the loss or "
                "grad calls gradguard.check on the parameters being checked?); a check cannot "
                "start inside another check of the same tensors: check them after it returns"
            )
        busy = busy or holder is not None
    return busy


def wait_free(keys: frozenset[Hashable]) -> None:
    """Wait until no other thread's check holds any of ``keys`` (Ctrl-C still interrupts).

    Raises:
        ConcurrentCheckError: this thread itself holds one of them.
    """
    me = threading.get_ident()
    with _lock:
        while _conflict(keys, me):
            _lock.wait(_WAIT_S)


def try_claim(keys: frozenset[Hashable]) -> bool:
    """Hold ``keys`` for this thread if no other thread does; never waits.

    Raises:
        ConcurrentCheckError: this thread itself holds one of them.
    """
    me = threading.get_ident()
    with _lock:
        if _conflict(keys, me):
            return False
        for key in keys:
            _holders[key] = me
        return True


def release(keys: Iterable[Hashable]) -> None:
    """Let other threads' checks of ``keys`` go on."""
    with _lock:
        for key in keys:
            _holders.pop(key, None)
        _lock.notify_all()
