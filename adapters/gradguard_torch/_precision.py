"""Evaluating a float32 (or float16) model in float64: what the shadow copy needs besides .double().

A float64 copy of the model is not enough on its own: the loss closure holds the user's float32
data. Measured on torch 2.13 (docs/pytorch.md, "Numerics"): ``F.mse_loss(m(x), y)`` with a
float64 output and a float32 target promotes, but ``F.huber_loss``, ``F.binary_cross_entropy``,
``F.cross_entropy(..., weight=w32)`` and ``x64 @ w32`` raise, and
``F.binary_cross_entropy_with_logits(out64, t32)`` silently returns a *float32* loss. So:

* :func:`cast_inputs`, a forward pre-hook on every module of the shadow, casts floating inputs
  to float64 before ``forward`` runs (custom autograd Functions then save float64 tensors for
  their backward: a Function's ``apply`` is not seen by a TorchFunctionMode);
* :class:`Float64Mode`, a ``TorchFunctionMode`` active while the loss runs, casts float32,
  float16 and bfloat16 tensor arguments of every torch function to float64, turns requests for
  those dtypes (``dtype=torch.float32``, ``.float()``, ``.to(torch.half)``) into float64, and
  makes float64 the default dtype (``torch.zeros(n)``), restoring it on exit.

The in-place target of an in-place operation (``t.add_(...)``, ``t[i] = ...``, ``out=``) is
never replaced by a float64 copy, which would silently drop the write; such a tensor keeps its
dtype (and its precision).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from gradguard.kit.dtypes import bfloat16
from gradguard.kit.signals import ProtectedContext
from gradguard_torch._compat import (
    close_interrupted_mode_stashes,
    function_modes,
    innermost_function_mode,
)

__all__ = [
    "BFLOAT16",
    "LOW_PRECISION",
    "AutocastSeen",
    "Float64Mode",
    "InputCasts",
    "cast_inputs",
    "to_float64",
]

BFLOAT16: np.dtype[Any] = bfloat16()
"""bfloat16 as the engine sees it: ml_dtypes' NumPy dtype (the kit's one mapping, shared with
the TensorFlow and JAX adapters; NumPy has none of its own).

``np.finfo`` knows it once ml_dtypes is imported, so the engine's step and noise model
use bfloat16's own unit round-off (2**-7) rather than float16's, which is 8x smaller.
"""

LOW_PRECISION = frozenset({torch.float32, torch.float16, torch.bfloat16})
"""The floating dtypes a shadow evaluation lifts to float64."""

_LOWERING_METHODS = frozenset({"float", "half", "bfloat16"})
# Calls that only read metadata or convert to Python: casting their tensor would copy it for
# nothing (``x.shape``, ``x.size()``) or change what the user reads back (``x.dtype``).
_PASS_THROUGH = frozenset(
    {
        "__get__",
        "__set__",
        "size",
        "dim",
        "numel",
        "nelement",
        "ndimension",
        "stride",
        "storage_offset",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "element_size",
        "data_ptr",
        "get_device",
        "untyped_storage",
        "__len__",
        "__repr__",
        "__format__",
        "__hash__",
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "item",
        "tolist",
        "numpy",
        "register_hook",
        "retain_grad",
        "backward",
    }
)
_IN_PLACE_DUNDERS = frozenset(
    {
        "__setitem__",
        "__iadd__",
        "__isub__",
        "__imul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__imatmul__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
    }
)


def to_float64(value: Any) -> Any:
    """``value`` with low-precision floating tensors and dtypes lifted to float64.

    Walks tuples, lists and dicts; returns the very same object when nothing changes, so a
    call with nothing to lift allocates nothing.
    """
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.dtype in LOW_PRECISION else value
    if isinstance(value, torch.dtype):
        return torch.float64 if value in LOW_PRECISION else value
    if type(value) is tuple or type(value) is list:
        lifted = [to_float64(item) for item in value]
        if any(new is not old for new, old in zip(lifted, value, strict=True)):
            return type(value)(lifted)
        return value
    if type(value) is dict:
        items = {key: to_float64(item) for key, item in value.items()}
        if any(items[key] is not item for key, item in value.items()):
            return items
        return value
    return value


def cast_inputs(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook (``with_kwargs=True``): floating inputs of a shadow module in float64."""
    return to_float64(args), to_float64(kwargs)


class InputCasts:
    """:func:`cast_inputs` on every module of a shadow, and a lean set for the hot path.

    A pre-hook and the :class:`Float64Mode` cost Python work on every module call and every
    torch function: on a 1,000-tensor model, 2-3x the float64 forward itself. Most of it lifts
    nothing (the root module lifts the input; everything below it already sees float64).
    :meth:`lean` keeps the hooks of the modules that did lift something so far and removes
    the others (a module without hooks takes torch's fast call path); :meth:`full` puts them
    back. The view decides when the lean set is safe (``TorchView._try_lean``).
    """

    def __init__(self, shadow: torch.nn.Module) -> None:
        self.lifted: set[int] = set()
        self._modules = list(shadow.modules())
        self._handles: dict[int, Any] = {}
        self.full()

    def _hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        lifted_args, lifted_kwargs = cast_inputs(module, args, kwargs)
        if lifted_args is not args or lifted_kwargs is not kwargs:
            self.lifted.add(id(module))
        return lifted_args, lifted_kwargs

    def full(self) -> None:
        """A hook on every module (the order among a module's hooks: ours last, as before)."""
        for module in self._modules:
            if id(module) not in self._handles:
                self._handles[id(module)] = module.register_forward_pre_hook(
                    self._hook, with_kwargs=True
                )

    def lean(self) -> None:
        """Hooks only on the modules that lifted an input so far."""
        for module in self._modules:
            if id(module) not in self.lifted:
                handle = self._handles.pop(id(module), None)
                if handle is not None:
                    handle.remove()


def _is_in_place(name: str) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_DUNDERS


class Float64Mode(ProtectedContext, TorchFunctionMode):
    """Every torch function called inside sees float64 instead of float32/16/bfloat16.

    Also makes float64 the default dtype while active. Not re-entrant; enter it once per call.
    Entering and leaving are each one step under a Ctrl-C (both changes or neither): the
    kit's :class:`~gradguard.kit.signals.ProtectedContext` runs :meth:`_enter` and
    :meth:`_leave`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._default_dtype = torch.float32

    def _enter(self) -> Float64Mode:
        self._default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            TorchFunctionMode.__enter__(self)  # type: ignore[no-untyped-call]  # untyped
        except BaseException:
            torch.set_default_dtype(self._default_dtype)
            raise
        return self

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        pop = TorchFunctionMode.__exit__
        try:
            # A Ctrl-C inside torch's handle_torch_function can have left this mode off the
            # stack, with a suspended push waiting (see _compat): finish that push, then pop
            # the mode only if it is there, with anything a loss left above it.
            if tb is not None:
                close_interrupted_mode_stashes(tb)
            if innermost_function_mode() is self:
                pop(self, exc_type, exc, tb)  # type: ignore[no-untyped-call]  # untyped
                return
            modes = function_modes()
            if any(mode is self for mode in modes):
                while modes and modes.pop() is not self:
                    pop(self, exc_type, exc, tb)  # type: ignore[no-untyped-call]  # untyped
                pop(self, exc_type, exc, tb)  # type: ignore[no-untyped-call]  # untyped
        finally:
            torch.set_default_dtype(self._default_dtype)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _PASS_THROUGH:
            return func(*args, **kwargs)
        if name in _LOWERING_METHODS and args and isinstance(args[0], torch.Tensor):
            func = torch.Tensor.double
        # The tensor an in-place op writes to is never swapped for a float64 copy.
        written = _is_in_place(name) and bool(args)
        args = (args[0], *to_float64(args[1:])) if written else to_float64(args)
        lifted = {k: v if k == "out" else to_float64(v) for k, v in kwargs.items()}
        return func(*args, **lifted)


class AutocastSeen(TorchFunctionMode):
    """Notes whether any torch function of the loss ran under ``torch.autocast``, and in what.

    Active around the native pass only (one forward and backward of the user's model): a loss
    that enters autocast itself has left it by the time its value comes back, so the only
    way to know that the gradient under test was computed in bfloat16 or float16 is to look
    while the loss runs. ``dtype`` is the least precise autocast dtype seen, or ``None``.
    """

    _DEVICES = ("cpu", "cuda")

    def __init__(self) -> None:
        super().__init__()
        self.dtype: torch.dtype | None = None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        if self.dtype is None:
            for device in self._DEVICES:
                if torch.is_autocast_enabled(device):
                    self.dtype = torch.get_autocast_dtype(device)
                    break
        return func(*args, **(kwargs or {}))
