"""Checks of the caller's input that every adapter and front door makes the same way.

Each names the mistake and the fix, and raises one error type for one mistake, whichever
adapter or front door meets it first: a loss that is not a callable ``loss(params)``
(:func:`check_loss_callable`), a loss that returns a list or tuple (:func:`check_loss_value`),
a params leaf that no adapter can check (:func:`unclaimed_leaves`), a Python float in params
that has no gradient (:func:`python_scalar_note`). Framework-free.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from gradguard.errors import LossError
from gradguard.kit.tree import Path, path_name, walk

__all__ = [
    "check_loss_callable",
    "check_loss_value",
    "describe_leaf",
    "python_scalar_note",
    "unclaimed_leaves",
]


def check_loss_callable(loss: object) -> None:
    """Refuse a loss that is not a callable taking the params as its one argument.

    A loss whose signature cannot be read (some builtins, C extensions) is accepted: only a
    signature that certainly refuses ``loss(params)`` is an error.

    Raises:
        LossError: ``loss`` is not callable, or cannot be called as ``loss(params)``.
    """
    if not callable(loss):
        raise LossError(
            f"loss must be a callable loss(params) -> scalar, got {type(loss).__name__}; "
            "pass the function, not its value (loss, not loss(params))"
        )
    try:
        signature = inspect.signature(loss)
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return
    try:
        signature.bind(object())
    except TypeError as exc:
        name = getattr(loss, "__name__", type(loss).__name__)
        raise LossError(
            f"loss must be callable as loss(params) -> scalar, with the params as its only "
            f"argument, but {name}{signature} cannot be ({exc}); close over the rest, "
            "e.g. lambda params: my_loss(params, x, y)"
        ) from None


def check_loss_value(value: object) -> None:
    """Refuse a loss value that is a list or tuple: a loss returns one scalar, everywhere.

    NumPy, TensorFlow and PyTorch would each read ``[0.5]`` differently (or not at all); the
    one rule is that a Python sequence is never a loss value. The commonest cause is a loss
    that returns ``(loss, extras)``.

    Raises:
        LossError: ``value`` is a list or tuple.
    """
    if isinstance(value, list | tuple):
        raise LossError(
            f"the loss returned a {type(value).__name__} of length {len(value)}; it must return "
            "one scalar (a float, a 0-d or one-element array or tensor): return the loss "
            "alone, not (loss, extras) or [loss]"
        )


def describe_leaf(value: object) -> str:
    """A short description of a params leaf for an error message: its type, and a str's value."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    kind = kind.removeprefix("builtins.")
    if isinstance(value, str):
        return f"a {kind} ({value[:40]!r})"
    return f"a {kind}"


def unclaimed_leaves(params: Any, claimed: Callable[[Any], bool]) -> list[tuple[str, Any]]:
    """The leaves of a dict/list/tuple params that no adapter claims on its own, by name.

    ``claimed(leaf)`` asks the adapters about one leaf. NumPy arrays and real numbers are left
    out: they are parameters whatever else the container holds.
    """
    if not isinstance(params, dict | list | tuple):
        return []
    found: list[tuple[str, Any]] = []
    for path, leaf in walk(params):
        if isinstance(leaf, np.ndarray | np.generic | numbers.Real):
            continue
        if not claimed(leaf):
            found.append((_subscript(path), leaf))
    return found


def _subscript(path: Path) -> str:
    """``params['a'][0]``: how the user wrote the place in their own code."""
    return "params" + "".join(f"[{part!r}]" for part in path) if path else "params"


def python_scalar_note(template: Any, missing: Iterable[Any], path: Path = ()) -> str:
    """A clause for a gradient that lacks keys whose params value is a number, or ``""``.

    A Python float in params is checked as a parameter (``params["learning_rate"] = 0.01``
    too), so its gradient is expected; the note says so and how to leave it out.
    """
    if not isinstance(template, dict):
        return ""
    scalars = [
        key
        for key in missing
        if isinstance(template.get(key), numbers.Real) and not isinstance(template.get(key), bool)
    ]
    if not scalars:
        return ""
    names = ", ".join(repr(path_name((*path, key))) for key in scalars)
    return (
        f"; {names} in params {'is a number' if len(scalars) == 1 else 'are numbers'}, "
        "which gradguard checks as a parameter: if it is a setting (a learning rate, a "
        "coefficient), take it out of params and close over it in the loss and grad"
    )
