"""One gradient validator, one set of messages, for every adapter.

An analytic gradient reaches the engine as one flat float64 vector in layout order. What can
be wrong on the way is the same in every framework: a structure that does not mirror the
params, a tensor that is missing, not an array, mis-shaped, or not finite. An adapter finds
each tensor's gradient in its own way (:func:`gradguard.kit.tree.walk_like` for a mirrored
container, :func:`leaves_by_name` for a dict by name or a list in order, its autodiff), turns
a framework tensor into a NumPy array, and leaves the checking and the wording here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gradguard.engine.layout import Layout
from gradguard.errors import GradientError
from gradguard.kit.notes import NO_GRADIENT
from gradguard.kit.tree import path_name, walk

__all__ = ["autodiff_gradient", "check_finite", "flatten_gradient", "leaves_by_name"]

FloatArray = npt.NDArray[np.float64]

_FIX_NON_FINITE = "fix the gradient's computation (a division by zero, a log of 0, an overflow?)"


def flatten_gradient(
    layout: Layout,
    leaves: Sequence[Any],
    *,
    to_array: Callable[[Any], npt.ArrayLike] = np.asarray,
    missing: Literal["error", "zero"] = "error",
    source: str = "the gradient",
) -> FloatArray:
    """Check each tensor's gradient and concatenate them, flat, float64, in layout order.

    Args:
        layout: The view's layout; ``leaves[i]`` is the gradient of ``layout[i]``.
        leaves: One gradient per tensor, in any form ``to_array`` understands.
        to_array: Turns one framework gradient into something ``np.asarray`` reads (a torch
            tensor moved to the CPU, say). Raising ``TypeError`` or ``ValueError`` means
            "not an array".
        missing: What a ``None`` gradient means: an error, or zeros (the framework's own
            convention for "nothing flowed into it", as ``.grad is None`` in PyTorch).
        source: What the gradient is, for messages (``"grad"``, ``"the analytic gradient"``).

    Raises:
        GradientError: a gradient is ``None`` (with ``missing="error"``), not an array,
            shaped unlike its tensor, or not finite; the message names the tensor and the fix.
    """
    if len(leaves) != len(layout):
        raise GradientError(
            f"{source} gives {len(leaves)} tensor(s) but {len(layout)} are checked "
            f"({', '.join(layout.names)}); give one gradient per parameter"
        )
    flat = np.zeros(layout.size, dtype=np.float64)
    for segment, leaf in zip(layout, leaves, strict=True):
        name, shape = segment.name, segment.shape
        if leaf is None:
            if missing == "zero":
                continue
            raise GradientError(
                f"{source} for {name!r} is None; give an array of shape {shape} for every "
                "parameter (zeros if the loss ignores it)"
            )
        try:
            value = np.asarray(to_array(leaf), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise GradientError(
                f"{source} for {name!r} is a {type(leaf).__name__}, not an array of shape {shape}"
            ) from exc
        if value.shape != shape:
            raise GradientError(
                f"{source} for {name!r} has shape {value.shape} but the parameter has shape "
                f"{shape}; give one array per parameter, of its shape (a transposed or "
                "unsummed gradient?)"
            )
        flat[segment.offset : segment.stop] = value.reshape(-1)
    check_finite(layout, flat, source=source)
    return flat


def autodiff_gradient(
    layout: Layout,
    grads: Sequence[Any],
    notes: dict[str, str | int | float | bool | None],
    *,
    to_array: Callable[[Any], npt.ArrayLike] = np.asarray,
    source: str = "the analytic gradient",
) -> FloatArray:
    """A framework autodiff's gradient, flat: a ``None`` (the tensor is not connected to the
    loss) counts as zero and is named in ``notes[NO_GRADIENT]``, so the reader knows.

    Raises:
        GradientError: as :func:`flatten_gradient` (a NaN in the backward pass, say).
    """
    missing = [segment.name for segment, g in zip(layout, grads, strict=True) if g is None]
    if missing:
        notes[NO_GRADIENT] = ", ".join(missing)
    return flatten_gradient(layout, grads, to_array=to_array, missing="zero", source=source)


def check_finite(layout: Layout, flat: FloatArray, *, source: str = "the gradient") -> None:
    """Refuse a flat gradient with a NaN or an infinity, naming the tensor and the element.

    Raises:
        GradientError: some value is not finite.
    """
    if np.all(np.isfinite(flat)):
        return
    for segment in layout:
        part = flat[segment.offset : segment.stop]
        bad = np.flatnonzero(~np.isfinite(part))
        if bad.size:
            first = list(segment.unravel(int(bad[0])))
            raise GradientError(
                f"{source} for {segment.name!r} (shape {segment.shape}) holds {bad.size} "
                f"non-finite value(s), the first at {first}: {part[bad[0]]!r}; " + _FIX_NON_FINITE
            )


def leaves_by_name(
    grad: Any,
    names: Sequence[str],
    *,
    order: str = "params",
    ignored: Collection[str] = (),
    is_leaf: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """A gradient given by name or in order, as one leaf per checked tensor.

    Accepted: a dict keyed by the checked names (nested dicts join their keys with ``"."``),
    a list or tuple with one gradient per tensor in order (nested ones are flattened), or a
    lone gradient when one tensor is checked.

    Args:
        grad: The gradient as the user gave it.
        names: The checked tensors' names, in layout order.
        order: Where the order comes from, for messages (``"model.trainable_variables"``).
        ignored: Names a dict may hold besides ``names`` (a tied parameter's second name).
        is_leaf: Whether an object is one gradient, when a framework's containers could be
            mistaken for one (default: anything but a dict, list or tuple).

    Raises:
        GradientError: a name is missing or unknown, or the count is wrong.
    """
    if isinstance(grad, dict):
        by_name = {path_name(path): leaf for path, leaf in walk(grad)}
        absent = [name for name in names if name not in by_name]
        unknown = [key for key in by_name if key not in names and key not in ignored]
        if absent or unknown:
            parts = [f"missing {absent}"] if absent else []
            parts += [f"unknown names {unknown}"] if unknown else []
            raise GradientError(
                "the gradient dict has " + " and ".join(parts) + "; it must map every checked "
                f"parameter name ({', '.join(names)}) to its gradient"
            )
        return [by_name[name] for name in names]
    lone = is_leaf(grad) if is_leaf is not None else not isinstance(grad, list | tuple)
    if lone:
        if len(names) == 1:
            return [grad]
        raise GradientError(
            f"the gradient is a single {type(grad).__name__}, but {len(names)} parameters are "
            f"checked ({', '.join(names)}); give a dict keyed by those names, or a list in the "
            f"order of {order}"
        )
    leaves = [leaf for _, leaf in walk(grad)]
    if len(leaves) != len(names):
        raise GradientError(
            f"the gradient is a {type(grad).__name__} of {len(leaves)} tensor(s), but "
            f"{len(names)} parameters are checked ({', '.join(names)}); give one per parameter "
            f"in the order of {order}, or a dict keyed by those names"
        )
    return leaves
