"""Nested params containers: walking dicts, lists and tuples, naming leaves, matching a gradient.

Every adapter accepts params nested in dicts, lists and tuples, names each leaf the same way
(dict keys and list positions joined with ``"."``; a lone leaf is ``"params"``), and checks that
a user-supplied gradient mirrors that structure. The walking lives here once; what counts as a
leaf (an ndarray, a torch tensor, a tf.Variable) is the adapter's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gradguard.errors import GradientError

__all__ = ["ROOT_NAME", "Path", "path_name", "rebuild", "walk", "walk_like"]

ROOT_NAME = "params"
"""The name of a leaf that is the whole params (a single array, a scalar)."""

Path = tuple[Any, ...]
"""The dict keys and list positions from the root to a leaf, raw (``1`` and ``"1"`` differ)."""


def walk(obj: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Yield ``(path, leaf)`` in a fixed order: dict insertion order, then list positions."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk(value, (*path, key))
    elif isinstance(obj, list | tuple):
        for position, value in enumerate(obj):
            yield from walk(value, (*path, position))
    else:
        yield path, obj


def path_name(path: Path) -> str:
    """The printable name of a leaf: its path joined with ``"."``, or ``"params"``."""
    return ".".join(str(part) for part in path) if path else ROOT_NAME


def rebuild(template: Any, leaves: Iterable[Any]) -> Any:
    """The container structure of ``template`` with its leaves replaced, in :func:`walk` order.

    Dicts keep their type, lists stay lists, named tuples are rebuilt as named tuples.
    """
    iterator = iter(leaves)

    def build(node: Any) -> Any:
        if isinstance(node, dict):
            return type(node)((key, build(value)) for key, value in node.items())
        if isinstance(node, list):
            return [build(value) for value in node]
        if isinstance(node, tuple):
            items = [build(value) for value in node]
            return type(node)(*items) if hasattr(node, "_fields") else tuple(items)
        return next(iterator)

    return build(template)


def _scalar_note(template: dict[Any, Any], missing: list[Any], path: Path) -> str:
    from gradguard.kit.validate import python_scalar_note  # validate walks with this module

    return python_scalar_note(template, missing, path)


def walk_like(template: Any, other: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Walk ``other`` (a gradient) along the structure of ``template`` (the params).

    Yields ``(path, leaf of other)`` for every leaf of ``template``, in :func:`walk` order.

    Raises:
        GradientError: ``other`` does not mirror ``template`` (a dict where a list is expected,
            missing or unexpected keys, a sequence of another length); the message names where.
    """
    where = path_name(path)
    if isinstance(template, dict):
        if not isinstance(other, dict):
            raise GradientError(
                f"the gradient for {where!r} is a {type(other).__name__}, but params there is "
                "a dict: grad must mirror the structure of params"
            )
        missing = [str(k) for k in template if k not in other]
        extra = [str(k) for k in other if k not in template]
        if missing or extra:
            parts = [f"missing keys {missing}"] if missing else []
            parts += [f"unexpected keys {extra}"] if extra else []
            raise GradientError(
                f"the gradient dict at {where!r} has " + " and ".join(parts) + "; it must have "
                "the same keys as params (a common slip: 'dW1' instead of 'W1')"
                + _scalar_note(template, [k for k in template if k not in other], path)
            )
        for key, value in template.items():
            yield from walk_like(value, other[key], (*path, key))
    elif isinstance(template, list | tuple):
        if not isinstance(other, list | tuple) or len(other) != len(template):
            kind = f"a {type(other).__name__}"
            if isinstance(other, list | tuple):
                kind += f" of length {len(other)}"
            raise GradientError(
                f"the gradient for {where!r} is {kind}, but params there is a "
                f"{type(template).__name__} of length {len(template)}"
            )
        for position, (value, leaf) in enumerate(zip(template, other, strict=True)):
            yield from walk_like(value, leaf, (*path, position))
    else:
        yield path, other
