"""Splitting JAX params into the leaves a check perturbs and the rest, and naming them.

Three kinds of params, one shape of answer (:class:`Split`): a flat list of leaves, which of
them are checked, their names (pytree key paths joined with ``/``), and how to rebuild the
object the loss receives from a list of leaves. The loss is then evaluated as a pure function
of that list, which is what ``jax.jit`` and ``jax.grad`` need.

The leaves are found by the kit's flatten step, :func:`gradguard.kit.tree.walk`, with JAX's
pytree registry plugged in as its ``expand=`` (:func:`expand`): every registered node (dicts,
lists, tuples, NamedTuples, ``nnx.State``, Equinox modules, optax states, a user's
``register_pytree_node``) is walked one level at a time, in JAX's own order, so the leaves
line up with ``jax.tree_util.tree_unflatten``.

- a **pytree** (dicts, lists, tuples, NamedTuples, registered nodes) of arrays: every leaf is
  checked, and every leaf must be a floating array;
- a **Flax NNX module**: its ``nnx.Param`` state is checked; the rest of its state (batch
  statistics, RNG streams) travels alongside, unchanged, so every evaluation starts from the
  same state and the user's module is never written;
- an **Equinox module**: its inexact array leaves (``eqx.partition(m, eqx.is_inexact_array)``)
  are checked; the rest stays static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from gradguard.errors import InvalidParamsError
from gradguard.kit.tree import ROOT_NAME, walk

__all__ = ["Split", "expand", "flatten_with_path", "key_name", "nnx_name", "split"]


def expand(obj: Any) -> list[tuple[Any, Any]] | None:
    """The kit's ``expand=`` for JAX: a pytree node's ``(key, child)`` pairs, ``None`` for a leaf.

    One level of JAX's own flattening (every child taken as a leaf), so dict keys come sorted
    as JAX sorts them; ``None`` children, empty subtrees to JAX, are left out.
    """
    if jax.tree_util.all_leaves([obj]):
        return None
    pairs, _ = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
    return [(path[0], child) for path, child in pairs if child is not None]


def flatten_with_path(tree: Any) -> tuple[list[tuple[tuple[Any, ...], Any]], Any]:
    """``jax.tree_util.tree_flatten_with_path``, through the kit's walk (its depth limit
    included): ``(path, leaf)`` pairs and the treedef that rebuilds the tree from the leaves."""
    treedef = jax.tree_util.tree_structure(tree)
    pairs = list(walk(tree, expand=expand))
    count: int = treedef.num_leaves  # type: ignore[attr-defined]  # missing from jaxlib's stub
    if len(pairs) != count:  # pragma: no cover - a node that flattens unstably
        raise InvalidParamsError(
            f"params ({type(tree).__name__}) flattens to {count} leaves at once but "
            f"to {len(pairs)} one level at a time; a registered pytree node must flatten the "
            "same way each time"
        )
    return pairs, treedef


def _key_part(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def key_name(path: tuple[Any, ...]) -> str:
    """A leaf's name: its key path joined with ``/`` (``params/dense/kernel``)."""
    return "/".join(_key_part(k) for k in path) if path else ROOT_NAME


def nnx_name(path: tuple[Any, ...]) -> str:
    """A Flax NNX state leaf's name (a Variable flattens to its value under ``value``)."""
    if path and getattr(path[-1], "name", None) == "value":
        path = path[:-1]
    return key_name(path)


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return None
    return key


@attrs.define
class Split:
    """The params as a flat list of leaves, and how to give the loss its object back.

    Attributes:
        kind: ``"pytree"``, ``"nnx"`` or ``"equinox"``.
        leaves: Every leaf, in flattening order (arrays, or Python scalars of a pytree).
        checked: Positions in ``leaves`` of the tensors the check perturbs.
        names: The checked tensors' names, in the same order.
        rebuild: ``rebuild(leaves) -> object`` that the loss receives.
        name_of: How a key path becomes a name (also used to match a given gradient).
        static_key: What, besides the leaves' shapes and dtypes, fixes the traced program
            (tree structure, NNX graph definition, Equinox static part), or None when it
            cannot be hashed (then nothing is reused across checks).
    """

    kind: str
    leaves: list[Any]
    checked: list[int]
    names: list[str]
    rebuild: Callable[[list[Any]], Any]
    name_of: Callable[[tuple[Any, ...]], str]
    static_key: Any


def _is_tracer(value: object) -> bool:
    return isinstance(value, jax.core.Tracer)


def _leaf_dtype(name: str, value: Any) -> np.dtype[Any]:
    if _is_tracer(value):
        raise InvalidParamsError(
            f"parameter {name!r} is a JAX tracer ({type(value).__name__}): gradguard.check was "
            "called inside jax.jit, jax.grad or jax.vmap, or a traced value leaked out of one. "
            "Call it outside any JAX transformation, on concrete arrays"
        )
    if isinstance(value, bool | np.bool_):
        raise InvalidParamsError(
            f"parameter {name!r} is a bool; only floating-point leaves can be checked"
        )
    if isinstance(value, int | np.integer):
        raise InvalidParamsError(
            f"parameter {name!r} is the integer {value!r}; only floating-point leaves can be "
            "checked: write a float, or leave it out of params (close over it in the loss)"
        )
    if isinstance(value, float):
        return np.dtype(str(jnp.asarray(value).dtype))
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        raise InvalidParamsError(
            f"parameter {name!r} is a {type(value).__name__}, not an array; params must be a "
            "pytree of JAX arrays, a Flax NNX module or an Equinox module"
        )
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        raise InvalidParamsError(
            f"parameter {name!r} is a PRNG key array ({dtype}); it cannot be checked: leave "
            "it out of params (pass it to the loss through a closure)"
        )
    result: np.dtype[Any] = np.dtype(str(dtype))
    if not jnp.issubdtype(result, jnp.floating):
        raise InvalidParamsError(
            f"parameter {name!r} (shape {tuple(value.shape)}) has dtype {result}; only "
            "floating-point leaves can be checked: leave integer and bool arrays out of "
            "params (close over them in the loss), or pass an Equinox module (its "
            "non-float leaves are static) or a Flax NNX module (only nnx.Param is checked)"
        )
    return result


def _check_names(names: list[str], paths: list[tuple[Any, ...]]) -> None:
    seen: dict[str, tuple[Any, ...]] = {}
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise InvalidParamsError(
                f"two parameters are both named {name!r} ({seen[name]} and {path}); a report "
                "must name each tensor once: rename a key that contains '/'"
            )
        seen[name] = path


def split(params: Any, kind: str) -> Split:
    """Split ``params`` of the given kind (see :func:`gradguard_jax._detect.kind_of`).

    Raises:
        InvalidParamsError: a checked leaf is not a floating array, is a tracer, or two
            leaves have the same name; or nothing is left to check.
    """
    if kind == "nnx":
        result = _split_nnx(params)
    elif kind == "equinox":
        result = _split_equinox(params)
    else:
        result = _split_pytree(params)
    if not result.checked:
        raise InvalidParamsError(
            f"params ({type(params).__name__}) holds no floating-point array to check"
            + (" (no nnx.Param with elements)" if kind == "nnx" else "")
        )
    return result


def _collect(
    with_paths: list[tuple[tuple[Any, ...], Any]],
    name_of: Callable[[tuple[Any, ...]], str],
) -> tuple[list[int], list[str], list[tuple[Any, ...]]]:
    checked: list[int] = []
    names: list[str] = []
    paths: list[tuple[Any, ...]] = []
    for position, (path, leaf) in enumerate(with_paths):
        name = name_of(path)
        _leaf_dtype(name, leaf)
        if int(np.size(leaf)) == 0:
            continue  # nothing to perturb; it still travels to the loss
        checked.append(position)
        names.append(name)
        paths.append(path)
    _check_names(names, paths)
    return checked, names, paths


def _split_pytree(params: Any) -> Split:
    with_paths, treedef = flatten_with_path(params)
    checked, names, _ = _collect(with_paths, key_name)
    return Split(
        kind="pytree",
        leaves=[leaf for _, leaf in with_paths],
        checked=checked,
        names=names,
        rebuild=lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves),
        name_of=key_name,
        static_key=("pytree", treedef),
    )


def _split_nnx(module: Any) -> Split:
    from flax import nnx

    parts: tuple[Any, ...] = nnx.split(module, nnx.Param, ...)
    graphdef, param_state, rest_state = parts
    p_paths, p_def = flatten_with_path(param_state)
    r_leaves, r_def = jax.tree_util.tree_flatten(rest_state)

    checked, names, _ = _collect(p_paths, nnx_name)
    count = len(p_paths)

    def rebuild(leaves: list[Any]) -> Any:
        unflatten = jax.tree_util.tree_unflatten
        return nnx.merge(
            graphdef, unflatten(p_def, leaves[:count]), unflatten(r_def, leaves[count:])
        )

    return Split(
        kind="nnx",
        leaves=[leaf for _, leaf in p_paths] + list(r_leaves),
        checked=checked,
        names=names,
        rebuild=rebuild,
        name_of=nnx_name,
        static_key=_hashable(("nnx", graphdef, p_def, r_def)),
    )


def _split_equinox(module: Any) -> Split:
    import equinox as eqx

    dynamic, static = eqx.partition(module, eqx.is_inexact_array)
    with_paths, treedef = flatten_with_path(dynamic)
    checked, names, _ = _collect(with_paths, key_name)

    def rebuild(leaves: list[Any]) -> Any:
        return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)

    return Split(
        kind="equinox",
        leaves=[leaf for _, leaf in with_paths],
        checked=checked,
        names=names,
        rebuild=rebuild,
        name_of=key_name,
        static_key=_hashable(("equinox", treedef, static)),
    )
