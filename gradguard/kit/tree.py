"""Nested params containers: walking them, naming leaves, claiming them, matching a gradient.

Every adapter accepts params nested in dicts, lists and tuples, names each leaf the same way
(dict keys and list positions joined with ``"."``; a lone leaf is ``"params"``), and checks that
a user-supplied gradient mirrors that structure. The walking lives here once; what counts as a
leaf (an ndarray, a torch tensor, a tf.Variable) is the adapter's business.

A framework with containers of its own (JAX pytree nodes, a Keras layer's variables) plugs
them in with an :data:`Expand` function: given an object, it returns the object's children as
``(key, child)`` pairs, or ``None`` when the object is not such a container. Every function here
takes one as ``expand=``; dicts, lists and tuples are walked without it::

    def expand(obj):                       # a JAX adapter, say
        if is_registered_pytree_node(obj):
            return [(key_name(k), child) for k, child in children_with_keys(obj)]
        return None

    names = [path_name(path) for path, _ in walk(params, expand=expand)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gradguard.errors import GradientError, InvalidParamsError

__all__ = [
    "MAX_DEPTH",
    "ROOT_NAME",
    "Expand",
    "Path",
    "holds_any",
    "holds_only",
    "path_name",
    "rebuild",
    "refuse_duplicate_names",
    "walk",
    "walk_like",
]

Expand = Callable[[Any], Iterable[tuple[Any, Any]] | None]
"""A framework's containers: ``expand(obj)`` is ``obj``'s ``(key, child)`` pairs, or ``None``."""

MAX_DEPTH = 64
"""Containers nested deeper than this are refused (a container that holds itself)."""

ROOT_NAME = "params"
"""The name of a leaf that is the whole params (a single array, a scalar)."""

Path = tuple[Any, ...]
"""The dict keys and list positions from the root to a leaf, raw (``1`` and ``"1"`` differ)."""


def _children(obj: Any, expand: Expand | None) -> Iterable[tuple[Any, Any]] | None:
    """``obj``'s ``(key, child)`` pairs if it is a container, else ``None`` (a leaf)."""
    if expand is not None:
        children = expand(obj)
        if children is not None:
            return children
    if isinstance(obj, dict):
        return obj.items()
    if isinstance(obj, list | tuple):
        return enumerate(obj)
    return None


def walk(obj: Any, path: Path = (), *, expand: Expand | None = None) -> Iterator[tuple[Path, Any]]:
    """Yield ``(path, leaf)`` in a fixed order: dict insertion order, then list positions.

    Raises:
        InvalidParamsError: containers nest deeper than :data:`MAX_DEPTH`.
    """
    if len(path) > MAX_DEPTH:
        raise InvalidParamsError(
            f"params nests containers more than {MAX_DEPTH} deep at {path_name(path[:3])!r}...; "
            "a container that holds itself cannot be checked"
        )
    children = _children(obj, expand)
    if children is None:
        yield path, obj
        return
    for key, value in children:
        yield from walk(value, (*path, key), expand=expand)


def holds_any(obj: Any, is_leaf: Callable[[Any], bool], *, expand: Expand | None = None) -> bool:
    """Whether some leaf of ``obj`` passes ``is_leaf``: how an adapter claims a container it
    can at least explain (a mix of its tensors and foreign leaves gets its error, not "no
    adapter"). Never raises: a container too deep to walk is nobody's."""
    try:
        return any(is_leaf(leaf) for _, leaf in walk(obj, expand=expand))
    except InvalidParamsError:
        return False


def holds_only(obj: Any, is_leaf: Callable[[Any], bool], *, expand: Expand | None = None) -> bool:
    """Whether every leaf of ``obj`` passes ``is_leaf`` (an empty container does). Never raises."""
    try:
        return all(is_leaf(leaf) for _, leaf in walk(obj, expand=expand))
    except InvalidParamsError:
        return False


def path_name(path: Path) -> str:
    """The printable name of a leaf: its path joined with ``"."``, or ``"params"``."""
    return ".".join(str(part) for part in path) if path else ROOT_NAME


def refuse_duplicate_names(paths: Iterable[Path]) -> None:
    """Refuse two leaves whose printed names collide (``{"a.b": x, "a": {"b": y}}``).

    Raises:
        InvalidParamsError: two paths print the same; the message names both.
    """
    seen: dict[str, Path] = {}
    for path in paths:
        name = path_name(path)
        if name in seen:
            raise InvalidParamsError(
                f"two parameters are both named {name!r} (at {list(seen[name])} and "
                f"{list(path)}); a report must name each tensor once: rename a key so that "
                "nested keys joined with '.' stay distinct"
            )
        seen[name] = path


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


def walk_like(
    template: Any, other: Any, path: Path = (), *, expand: Expand | None = None
) -> Iterator[tuple[Path, Any]]:
    """Walk ``other`` (a gradient) along the structure of ``template`` (the params).

    Yields ``(path, leaf of other)`` for every leaf of ``template``, in :func:`walk` order.

    Raises:
        GradientError: ``other`` does not mirror ``template`` (a dict where a list is expected,
            missing or unexpected keys, a sequence of another length); the message names where.
    """
    where = path_name(path)
    custom = expand(template) if expand is not None else None
    if custom is not None:
        theirs = expand(other) if expand is not None else None
        mine = list(custom)
        pairs = list(theirs) if theirs is not None else None
        if pairs is None or [k for k, _ in pairs] != [k for k, _ in mine]:
            raise GradientError(
                f"the gradient for {where!r} is a {type(other).__name__}, but params there is "
                f"a {type(template).__name__}: grad must mirror the structure of params"
            )
        for (key, value), (_, leaf) in zip(mine, pairs, strict=True):
            yield from walk_like(value, leaf, (*path, key), expand=expand)
    elif isinstance(template, dict):
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
            yield from walk_like(value, other[key], (*path, key), expand=expand)
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
            yield from walk_like(value, leaf, (*path, position), expand=expand)
    else:
        yield path, other
