"""The PyTorch adapter: modules, tensors and Parameters, and dicts, lists and tuples of tensors.

How a check runs (``docs/pytorch.md`` has the measurements behind each choice):

* **Which tensors.** A module's parameters that require grad, named by ``named_parameters()``
  (tied parameters once); DataParallel / DistributedDataParallel wrappers are unwrapped. Or
  the tensors of a tensor, a Parameter, or a dict/list/tuple nesting them (a tensor given
  twice, or tensors that share memory, are refused: they would move together).
* **Where the loss is evaluated.** A module with float32 or float16 parameters or buffers is
  evaluated in a private **float64 shadow copy** (``copy.deepcopy`` then ``.double()``), with
  its inputs and the loss's own tensors lifted to float64 (:mod:`gradguard_torch._precision`):
  the engine then uses float64 steps and tolerances and sees bugs far below float32 noise.
  The check never writes to the user's module. If the shadow cannot be built or used (a
  module that cannot be deep-copied, a loss that does not use the module it is given), the
  check falls back to evaluating in place, in the model's own dtype, and
  ``report.notes["evaluation"]`` says why; an exception the loss raises in the shadow reaches
  the caller, with a note on evaluating in place. Float64 models and tensor containers
  are evaluated in place: perturbed values are written into the tensors' storage under
  ``.data`` (no autograd version bump, so a graph built before the check stays usable) and
  the saved originals written back.
* **The analytic gradient** comes from ``torch.autograd.grad`` (``.grad`` fields untouched),
  computed with the first evaluation at the unperturbed point, before any step size is
  chosen. A parameter that autograd gives no gradient (a detached branch) counts as zero.
  Through ``torch.utils.checkpoint(..., use_reentrant=True)``, which refuses
  ``torch.autograd.grad``, a module's gradient comes from ``.backward()``, every ``.grad`` it
  reaches saved and put back.
* **Repeatability.** Every evaluation and the gradient start from the same global RNG state
  (CPU, and CUDA when initialized), and buffers that an evaluation changes (BatchNorm running
  statistics in train mode) are put back before the next one: a model left in train mode with
  Dropout gives the same loss every time; so does a module whose noise comes from a
  ``torch.Generator`` it holds. The RNG states, generators, buffers and parameters of the
  user's module (which a loss may reach through its closure, even when a shadow is
  evaluated) are restored exactly when the view closes, whatever happened.
* **TF32** is switched off for the duration of a check on CUDA, and restored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from gradguard.engine.layout import Layout
from gradguard.errors import (
    GradGuardError,
    GradientError,
    InvalidParamsError,
    LossError,
    SettingsError,
)
from gradguard.kit import notes
from gradguard.kit.contract import Adapter, FlatView, IndexArray, scalar_loss_value
from gradguard.kit.dtypes import carried_precision, least_precise
from gradguard.kit.gradients import flatten_gradient, leaves_by_name
from gradguard.kit.memory import Extent, refuse_shared
from gradguard.kit.restoring import run_all
from gradguard.kit.signals import deferred, entered, left, transition
from gradguard.kit.tree import (
    Path,
    path_name,
    rebuild,
    refuse_duplicate_names,
    walk,
    walk_like,
)
from gradguard.kit.validate import check_loss_value
from gradguard_torch._compat import compiled_original, is_compiled_module, uncompile
from gradguard_torch._precision import (
    BFLOAT16,
    LOW_PRECISION,
    AutocastSeen,
    Float64Mode,
    InputCasts,
)
from gradguard_torch._tf32 import Tf32Switch

__all__ = ["TorchAdapter", "TorchView", "unwrap_module"]

FloatArray = npt.NDArray[np.float64]

_NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {
    torch.bfloat16: BFLOAT16,
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}
_LOSS_DTYPES = _NUMPY_DTYPES


class _NoDependenceError(LossError):
    """The loss has no autograd path from the checked parameters."""


_SHADOW_RAISED = (
    "gradguard raised this while evaluating the loss on its float64 shadow copy of the "
    "model (float32/float16 models are checked in float64, see docs/pytorch.md). If the "
    "loss or an op in it cannot run in float64 (a float32-only kernel), evaluate the model "
    "in place in its own dtype: register a plugin returning "
    "gradguard_torch.TorchAdapter(shadow=False) (docs/pytorch.md, 'Evaluation')"
)
_REENTRANT = "use_reentrant=True"

_NO_DEPENDENCE = (
    "the loss does not depend on any of the checked parameters (autograd finds no path from "
    "them to the loss): compute it from the object it receives, e.g. "
    "check(lambda m: F.mse_loss(m(x), y), model), not from a model held in a closure, and "
    "do not detach it, compute it under torch.no_grad(), or go through .item() or .numpy()"
)


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(module, wrappers):
            inner = module.module
        elif is_compiled_module(module):
            inner = compiled_original(module)
        else:
            return module
        assert isinstance(inner, torch.nn.Module)
        module = inner


def _trained_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module training calls: the compiled wrapper of a ``torch.compile`` d model."""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while isinstance(module, wrappers):
        inner = module.module
        assert isinstance(inner, torch.nn.Module)
        module = inner
    return module


# -- reading params --------------------------------------------------------------------------


def _describe(tensor: torch.Tensor) -> str:
    return f"shape {tuple(tensor.shape)}, dtype {tensor.dtype}, device {tensor.device}"


def _check_initialized(name: str, tensor: torch.Tensor) -> None:
    if isinstance(tensor, torch.nn.parameter.UninitializedParameter):
        raise InvalidParamsError(
            f"parameter {name!r} is an uninitialized lazy parameter; run one forward pass "
            "(model(x)) before checking, so that its shape is known"
        )


def _check_tensor(name: str, tensor: torch.Tensor, *, tree: bool) -> None:
    """Refuse a tensor that cannot be perturbed and differentiated, naming the fix."""
    where = f"parameter {name!r} ({_describe(tensor)})"
    if tensor.layout != torch.strided:
        raise InvalidParamsError(
            f"{where} has layout {tensor.layout}; only dense tensors can be checked: "
            "pass tensor.to_dense()"
        )
    if tensor.is_meta:
        raise InvalidParamsError(
            f"{where} is on the meta device and holds no values; materialize the model "
            "(model.to_empty(device=...) and initialize it) before checking"
        )
    if tensor.dtype not in _NUMPY_DTYPES:
        kind = "complex" if tensor.is_complex() else "non-floating"
        raise InvalidParamsError(
            f"{where} has {kind} dtype {tensor.dtype}; only bfloat16, float16, float32 and "
            "float64 tensors can be checked: cast it (tensor.double()) or leave it out of params"
        )
    if tensor.is_inference():
        raise InvalidParamsError(
            f"{where} was created under torch.inference_mode() and cannot be written to "
            "outside it; create it outside inference mode (or clone() it there)"
        )
    if tree and tensor.requires_grad and not tensor.is_leaf:
        raise InvalidParamsError(
            f"{where} is computed from other tensors (it has a grad_fn, "
            f"{type(tensor.grad_fn).__name__}); pass the leaf tensors it is computed from "
            "(e.g. the Parameters), or tensor.detach().requires_grad_()"
        )


def _extent(tensor: torch.Tensor) -> Extent:
    """The byte range ``[start, stop)`` a tensor's elements occupy."""
    if tensor.numel() == 0:
        return 0, 0
    start = tensor.data_ptr()
    strides = zip(tensor.shape, tensor.stride(), strict=True)
    extent = sum((size - 1) * stride for size, stride in strides)
    return start, start + (extent + 1) * tensor.element_size()


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors whose extents overlap have an element in common (on the CPU:
    exactly, through NumPy; elsewhere: assumed)."""
    if a.device.type != "cpu":
        return True
    return bool(np.shares_memory(a.detach().numpy(), b.detach().numpy()))


def _check_disjoint(entries: list[tuple[str, torch.Tensor]]) -> None:
    """Distinct tensors must not overlap in memory: perturbing one would move the other."""
    tensors = [t for _, t in entries]
    refuse_shared(
        [(name, _extent(t)) for name, t in entries],
        lambda i, j: _shares(tensors[i], tensors[j]),
    )


def _check_devices(entries: list[tuple[str, torch.Tensor]]) -> torch.device:
    devices: dict[torch.device, str] = {}
    for name, tensor in entries:
        devices.setdefault(tensor.device, name)
    if len(devices) > 1:
        listed = ", ".join(f"{name!r} on {device}" for device, name in devices.items())
        raise InvalidParamsError(
            f"the parameters are on different devices ({listed}); a check needs them on one "
            "device: move the model there first (model.to(device)), or check each device's "
            "part separately"
        )
    return next(iter(devices))


def _module_entries(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    entries: list[tuple[str, torch.Tensor]] = []
    for name, parameter in module.named_parameters():  # tied parameters come once
        if not parameter.requires_grad:
            continue
        _check_initialized(name, parameter)
        entries.append((name, parameter))
    if not entries:
        raise InvalidParamsError(
            f"the {type(module).__name__} has no parameter that requires grad (all frozen, or "
            "none at all); unfreeze what you want checked (p.requires_grad_(True))"
        )
    return entries


def _tree_entries(params: Any) -> tuple[list[tuple[str, torch.Tensor]], dict[Path, int]]:
    """The tensors of a tree, and the position of each path's tensor among them."""
    entries: list[tuple[str, torch.Tensor]] = []
    positions: dict[Path, int] = {}
    for path, leaf in walk(params, ()):
        name = path_name(path)
        if isinstance(leaf, torch.nn.Module):
            raise InvalidParamsError(
                f"params[{name!r}] is a module ({type(leaf).__name__}); pass the module itself, "
                "or several modules in an nn.ModuleDict / nn.ModuleList"
            )
        if not isinstance(leaf, torch.Tensor):
            raise InvalidParamsError(
                f"params[{name!r}] is a {type(leaf).__module__}.{type(leaf).__qualname__}, not "
                "a torch tensor; the PyTorch adapter checks torch tensors only: convert it "
                "(torch.as_tensor(value, dtype=torch.float64)) or leave it out of params"
            )
        _check_initialized(name, leaf)
        if leaf.numel() == 0:  # nothing to check
            continue
        positions[path] = len(entries)
        entries.append((name, leaf))
    if not entries:
        raise InvalidParamsError(
            "params is empty: there is no tensor to check (pass a model, a tensor, or a "
            "dict/list of tensors the loss depends on)"
        )
    refuse_duplicate_names(list(positions))
    return entries, positions


# -- the state a check must leave as it found it -----------------------------------------------


# A native gradient further than this from the float64 shadow's, with random draws in the
# loss, is not trusted to have seen the shadow's noise (float32 backprop: within 1e-7).
_RANDOM_DRAWS_APART = 1e-4


class _RngState:
    """The global torch RNG states: replayed before every evaluation, and restored."""

    def __init__(self) -> None:
        self.cpu = torch.default_generator.get_state()
        self.cuda: list[torch.Tensor] | None = None
        # is_initialized is untyped in torch 2.13.
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            self.cuda = torch.cuda.get_rng_state_all()

    def replay(self) -> None:
        torch.default_generator.set_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class _Generators:
    """``torch.Generator`` objects a module holds as attributes: replayed, and restored.

    A module that draws its noise from a generator of its own (``torch.randn(...,
    generator=self.gen)``) would otherwise draw new noise at every evaluation and be judged
    nondeterministic; each evaluation starts from the state the check found instead.
    """

    def __init__(self, module: torch.nn.Module | None) -> None:
        found: dict[int, torch.Generator] = {}
        if module is not None:
            for submodule in module.modules():
                for value in vars(submodule).values():
                    if isinstance(value, torch.Generator):
                        found.setdefault(id(value), value)
        self.saved = [(g, g.get_state()) for g in found.values()]

    def replay(self) -> None:
        for generator, state in self.saved:
            generator.set_state(state)


class _Buffers:
    """A module's buffers: replayed when evaluations change them, restored at the end."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if module is not None:
            self.pairs = [(b, b.detach().clone()) for b in module.buffers()]
        self.mutable: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._watch = 2  # calls left to watch for buffers that change

    def replay(self) -> None:
        for buffer, saved in self.mutable:
            buffer.data.copy_(saved)

    def watch(self) -> None:
        """After a call: remember which buffers it changed (only the first calls are watched)."""
        if self._watch <= 0 or not self.pairs:
            return
        self._watch -= 1
        seen = {id(b) for b, _ in self.mutable}
        for buffer, saved in self.pairs:
            if id(buffer) not in seen and not torch.equal(buffer, saved):
                self.mutable.append((buffer, saved))

    def restore(self) -> None:
        for buffer, saved in self.pairs:
            buffer.data.copy_(saved)


def _is_dtype_error(exc: BaseException) -> bool:
    """Whether an exception is torch refusing to mix dtypes (what the Float64Mode prevents)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError | TypeError) and (
        "dtype" in text or "scalar type" in text or "double" in text or "float" in text
    )


class _Slot:
    """One checked tensor: what evaluations read, and how to write into it exactly."""

    def __init__(self, name: str, user: torch.Tensor, target: torch.Tensor) -> None:
        self.name = name
        self.user = user
        self.target = target  # the user's tensor, or its float64 shadow
        self.data = target.data  # writes bypass autograd's version counter
        self.shape = tuple(target.shape)
        self.device = target.device
        self.flat = self.data.view(-1) if self.data.is_contiguous() else None
        self.np_dtype = _NUMPY_DTYPES[target.dtype]
        self.exact = self.np_dtype == np.float64
        self.saved = self.data.clone()
        self.saved_flat = self.saved.reshape(-1)
        original = user.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy().copy()
        original.flags.writeable = False  # the engine must not scribble on it
        self.original: FloatArray = original

    def _index(self, index: IndexArray) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.flat is not None:
            return torch.from_numpy(index).to(self.device)
        return tuple(
            torch.from_numpy(np.ascontiguousarray(i)).to(self.device)
            for i in np.unravel_index(index, self.shape)
        )

    def set(self, index: IndexArray | None, stored: npt.NDArray[Any]) -> None:
        if index is not None and index.size == 1 and self.flat is not None:
            self.flat[int(index[0])] = float(stored[0])  # exact: stored is in the tensor's dtype
            return
        source = torch.from_numpy(np.ascontiguousarray(stored)).to(self.device)
        if index is None:
            self.data.copy_(source.view(self.shape))
        elif self.flat is not None:
            self.flat[self._index(index)] = source
        else:
            self.data[self._index(index)] = source

    def reset(self, index: IndexArray | None) -> None:
        if index is None:
            self.data.copy_(self.saved)
        elif index.size == 1 and self.flat is not None:
            i = int(index[0])
            self.flat[i] = float(self.original[i])  # exact: the original came from this dtype
        elif self.flat is not None:
            where = self._index(index)
            self.flat[where] = self.saved_flat[where]
        else:
            where = self._index(index)
            self.data[where] = self.saved[where]

    def restore(self) -> None:
        self.data.copy_(self.saved)

    def drifted(self) -> bool:
        """Whether what evaluations read, or the user's own tensor, no longer holds the
        original values (the engine's writes are all reset when this is asked)."""
        if not torch.equal(self.data, self.saved):
            return True
        if self.target is self.user:
            return False
        original = torch.from_numpy(self.original.copy()).view(self.shape)
        return not torch.equal(self.user.detach().cpu().to(torch.float64), original)

    def restore_user(self) -> None:
        """Put the user's tensor back when evaluations ran elsewhere (a loss may write to it
        through a closure)."""
        if self.target is self.user:
            self.restore()
            return
        original = torch.from_numpy(self.original.copy()).view(self.shape)
        self.user.data.copy_(original.to(device=self.user.device, dtype=self.user.dtype))


class _Grads:
    """``.grad`` fields, saved when a user-supplied gradient function may touch them."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.saved = [
            (t, t.grad, None if t.grad is None else t.grad.detach().clone()) for t in tensors
        ]

    def restore(self) -> None:
        for tensor, grad, values in self.saved:
            tensor.grad = grad
            if grad is not None and values is not None:
                grad.data.copy_(values)


# -- the view ----------------------------------------------------------------------------------


class TorchView(FlatView):
    """A flat view over a module's or a tensor container's parameters."""

    adapter = "torch"
    joint_writes = True  # each tensor is written in place, independently of the others

    def __init__(
        self,
        params: Any,
        loss: Callable[..., Any],
        grad: Any,
        *,
        shadow: bool = True,
        native_gradient: bool = True,
    ) -> None:
        self._loss = loss
        self._grad = grad
        self._module: torch.nn.Module | None = None
        self._positions: dict[Path, int] = {}
        self._trained: torch.nn.Module | None = None
        if isinstance(params, torch.nn.Module):
            self._module = unwrap_module(params)
            self._trained = _trained_module(params)
            entries = _module_entries(self._module)
            self._presented: Any = self._module
        else:
            entries, self._positions = _tree_entries(params)
            self._presented = params
        self._template = params
        self._entries = entries
        self.device = _check_devices(entries)
        for name, tensor in entries:
            _check_tensor(name, tensor, tree=self._module is None)
        _check_disjoint(entries)
        self.layout = Layout.from_tensors(
            [(name, tuple(t.shape), _NUMPY_DTYPES[t.dtype]) for name, t in entries]
        )
        self._notes: dict[str, str | int | float | bool | None] = {}
        self._gradient: FloatArray | None = None
        self._first = True
        self._writes = 0
        self._in_place = False
        self._seen_loss_dtype: torch.dtype | None = None
        self._gradient_dtype: np.dtype[Any] | None = None
        self._spread: FloatArray | None = None
        self.native_gradient = native_gradient
        self._tf32: Tf32Switch | None = None
        self._shadow: torch.nn.Module | None = None
        self._grads: _Grads | None = None
        self._casts: InputCasts | None = None
        self._lean = False  # shadow evaluations without the Float64Mode (see _try_lean)
        self._lean_tried = False
        self._rng = _RngState()
        # The user's own buffers and generators, saved before anything runs: a loss that
        # calls the model from its closure updates them even while a shadow is evaluated.
        self._user_buffers = _Buffers(self._module)
        self._user_generators = _Generators(self._module)
        self._generators = self._user_generators
        self._grad_enabled = torch.is_grad_enabled()
        wants_shadow = self._module is not None and shadow and self._needs_float64(self._module)
        if wants_shadow:
            try:
                self._shadow = self._make_shadow(self._module)  # type: ignore[arg-type]
            except Exception as exc:  # a module deepcopy or .double() cannot handle
                self._fall_back(f"the module could not be copied: {type(exc).__name__}: {exc}")
        if self._shadow is None:
            self._go_native()
        if self.device.type == "cuda":
            self._tf32 = Tf32Switch.off()
            self._notes[notes.TF32] = self._tf32.note(gpu=True)

    # -- setting up --------------------------------------------------------------------------

    @staticmethod
    def _needs_float64(module: torch.nn.Module) -> bool:
        tensors = [*module.parameters(), *module.buffers()]
        return any(t.dtype in LOW_PRECISION for t in tensors)

    def _make_shadow(self, module: torch.nn.Module) -> torch.nn.Module:
        """A private float64 copy whose modules lift their inputs to float64."""
        shadow = copy.deepcopy(module)
        for parameter in shadow.parameters():
            parameter.grad = None
        uncompile(shadow)  # the shadow runs eagerly: module.compile() must not follow it
        shadow.double()
        self._casts = InputCasts(shadow)
        by_name = dict(shadow.named_parameters())
        self._slots = [_Slot(name, t, by_name[name]) for name, t in self._entries]
        self._buffers = _Buffers(shadow)
        self._generators = _Generators(shadow)
        self._presented = shadow
        self._loss_dtype: np.dtype[Any] = np.dtype(np.float64)
        self._notes[notes.EVALUATION] = "float64 shadow copy"
        return shadow

    def _go_native(self) -> None:
        """Evaluate in place, in the tensors' own dtypes."""
        self._shadow = None
        self._in_place = True
        self._seen_loss_dtype = None
        self._presented = self._module if self._module is not None else self._template
        self._slots = [_Slot(name, t, t) for name, t in self._entries]
        self._buffers = self._user_buffers
        self._generators = self._user_generators
        self._loss_dtype = least_precise(*(slot.np_dtype for slot in self._slots))
        self._notes.setdefault(notes.EVALUATION, "in place")
        if callable(self._grad):  # a user gradient function may run backward() on them
            tensors = [t for _, t in self._entries]
            if self._module is not None:
                tensors = list(self._module.parameters())
            self._grads = _Grads(tensors)

    def _fall_back(self, reason: str) -> None:
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for _, t in self._entries})
        self._notes[notes.EVALUATION] = (
            f"in place, {'/'.join(dtypes)} (no float64 shadow: {reason})"
        )
        self._shadow = None

    # -- calling the loss --------------------------------------------------------------------

    def _run(self, function: Callable[..., Any], *, grad_enabled: bool) -> Any:
        """Call ``function`` on what the loss sees, from the saved RNG and buffer state."""
        self._rng.replay()
        self._buffers.replay()
        self._generators.replay()
        with torch.set_grad_enabled(grad_enabled):
            if self._shadow is not None:
                with Float64Mode():
                    result = function(self._presented)
            else:
                result = function(self._presented)
        self._buffers.watch()
        return result

    def _loss_tensor(self, value: Any) -> torch.Tensor:
        """The loss as a one-element floating tensor, or a LossError that says what to fix."""
        if not isinstance(value, torch.Tensor):
            check_loss_value(value)
            if self._grad is None:
                raise LossError(
                    f"the loss returned a {type(value).__name__}, not a tensor; gradguard "
                    "differentiates the loss with autograd, so return the tensor itself "
                    "(drop .item() / float()), or pass grad"
                )
            return torch.as_tensor(scalar_loss_value(value), dtype=torch.float64)
        if value.numel() != 1:
            raise LossError(
                f"the loss returned a tensor of shape {tuple(value.shape)}; it must return a "
                "scalar (reduce it, e.g. with .mean() or .sum())"
            )
        if value.dtype not in _LOSS_DTYPES:
            raise LossError(
                f"the loss returned a tensor of dtype {value.dtype}; it must be a real "
                "floating tensor"
            )
        if value.dtype is not self._seen_loss_dtype:  # np.finfo is slow: once per dtype
            self._seen_loss_dtype = value.dtype
            self._loss_dtype = least_precise(self._loss_dtype, _LOSS_DTYPES[value.dtype])
        return value

    @staticmethod
    def _value(loss: torch.Tensor) -> float:
        return float(loss.item())

    def evaluate(self) -> float:
        if self._first and self._writes == 0:
            return self._first_evaluation()
        # The hot path (every probe): _run inlined, and grad mode switched off once for the
        # rest of the check instead of per call (restore() puts the caller's mode back).
        self._rng.replay()
        if self._buffers.mutable:
            self._buffers.replay()
        if self._generators.saved:
            self._generators.replay()
        if torch.is_grad_enabled():
            torch.set_grad_enabled(False)
        if self._lean:
            return self._lean_evaluation()
        if self._shadow is not None:
            with Float64Mode():
                value = self._loss(self._presented)
        else:
            value = self._loss(self._presented)
        self._buffers.watch()
        result = self._value(self._loss_tensor(value))
        if not self._lean_tried and self._shadow is not None and self._writes == 0:
            self._try_lean(result)
        return result

    # -- the lean shadow evaluation ------------------------------------------------------------

    def _lean_loss(self, *, trial: bool = False) -> torch.Tensor | None:
        """The loss in the shadow with the lean input casts and no Float64Mode, from the
        saved state; ``None`` when that does not give a float64 loss tensor.

        In the ``trial`` (where the full machinery just evaluated the same point) any
        exception means the lean path is at fault. Later, only an error about dtypes is
        (a float32 tensor meeting a float64 one); any other exception is the loss's own and
        surfaces, as it would from the full machinery.
        """
        self._rng.replay()
        if self._buffers.mutable:
            self._buffers.replay()
        if self._generators.saved:
            self._generators.replay()
        try:
            value = self._loss(self._presented)
        except Exception as exc:
            if trial or _is_dtype_error(exc):
                return None
            raise
        finally:
            self._buffers.watch()
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float64:
            return None
        if value.numel() != 1:
            return None
        return value

    def _try_lean(self, full: float) -> None:
        """At the determinism evaluation: switch to the lean path if it gives the same bits.

        The Float64Mode and a pre-hook on every module cost Python work per torch function
        and per module call (2-3x a float64 forward on a model of 1,000 small tensors). If
        the loss, evaluated with only the pre-hooks that lifted an input and without the
        mode, gives a float64 loss bit-identical to the full machinery's at the unperturbed
        point, nothing the mode does changes this loss (a float32 intermediate, a float32
        default dtype or a float32 random draw would show in the bits), and the probes run
        lean. A lean evaluation that later raises or returns anything but a float64 scalar
        switches back to the full machinery for good and is evaluated again.
        """
        self._lean_tried = True
        casts = self._casts
        if casts is None:
            return
        casts.lean()
        lean = self._lean_loss(trial=True)
        if lean is not None and float(lean.item()) == full and math.isfinite(full):
            self._lean = True
        else:
            casts.full()

    def _lean_evaluation(self) -> float:
        value = self._lean_loss()
        if value is None:  # back to the full machinery, for good
            self._lean = False
            assert self._casts is not None
            self._casts.full()
            return self.evaluate()
        return self._value(self._loss_tensor(value))

    def _first_evaluation(self) -> float:
        """The loss at the unperturbed point, and the analytic gradient with it.

        In a shadow, a loss that ignores the module it is given switches the check to
        in-place evaluation before the engine has chosen a step from the loss dtype; an
        exception the loss raises in the shadow surfaces, with a note on evaluating in place.
        """
        self._first = False
        if self._shadow is not None:
            try:
                return self._value_and_gradient()
            except _NoDependenceError:
                self._fall_back(
                    "the loss does not use the module it is given; write it as "
                    "lambda m: ... m(x) ... to have it evaluated in float64"
                )
                # The shadow's try ran the user's module through the closure.
                self._user_buffers.restore()
                self._user_generators.replay()
            except GradGuardError:
                raise
            except Exception as exc:
                exc.add_note(_SHADOW_RAISED)
                raise
            self._go_native()
        return self._value_and_gradient()

    def _value_and_gradient(self) -> float:
        if self._grad is not None:
            value = self._value(self._loss_tensor(self._run(self._loss, grad_enabled=False)))
            if math.isfinite(value):
                self._gradient = self._explicit_gradient()
            return value
        # Grad mode on throughout, even when the caller runs the check under torch.no_grad().
        with self._requiring_grad(), torch.enable_grad():
            loss = self._loss_tensor(self._run(self._loss, grad_enabled=True))
            value = self._value(loss)
            if math.isfinite(value):  # else the engine reports the loss, not the gradient
                self._gradient = self._autograd(loss)
        if self._shadow is not None and self._gradient is not None and self.native_gradient:
            self._use_native_gradient()
        return value

    def _use_native_gradient(self) -> None:
        """Take the analytic side from the model as it trains, in its own dtypes.

        The float64 shadow gives the finite differences; the gradient under test is the one
        training computes (a backward that dispatches on dtype, a float32-only kernel path).
        The user's module runs forward and backward once, from the same RNG, buffer and
        generator state as the shadow, and every buffer and generator is put back after.
        The shadow's float64 gradient stays as a reference: the notes say how far apart the
        two are, which tells a float32-only bug from one in both paths.
        """
        module = self._trained
        assert module is not None
        params = [t for _, t in self._entries]
        self._rng.replay()
        self._user_buffers.replay()
        self._user_generators.replay()
        drew = False
        seen = AutocastSeen()
        try:
            with _RequiresGrad(params), torch.enable_grad(), seen:
                loss = self._loss(module)
                if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                    return  # a loss that does not differentiate natively: keep float64
                # Every native gradient less precise than the shadow's has its round-off
                # measured: half precision, and float32 too (a bias's sum over 512 positions
                # that training has made cancel is 1e-4 off, far beyond an a-priori bound).
                kinds = {t.dtype for t in params} | {seen.dtype}
                unit = _dither_unit(kinds)
                scalar = loss.reshape(())
                measure = unit is not None
                grads = torch.autograd.grad(scalar, params, allow_unused=True, retain_graph=measure)
                rescaled = _rescaled_gradient(scalar, params) if measure else None
                if rescaled is not None:
                    assert unit is not None
                    dithered = [
                        self._dithered_gradient(module, params, unit * sign) for sign in (1, -1)
                    ]
            drew = not torch.equal(torch.default_generator.get_state(), self._rng.cpu) or any(
                not torch.equal(g.get_state(), state) for g, state in self._user_generators.saved
            )
        except RuntimeError as exc:  # e.g. reentrant checkpointing: keep the float64 side
            self._notes[notes.GRADIENT] = f"float64 shadow (native: {type(exc).__name__})"
            return
        finally:
            self._user_buffers.restore()
            self._user_generators.replay()
        flat = flatten_gradient(
            self.layout,
            grads,
            to_array=_to_numpy,
            missing="zero",
            source="the native gradient (autograd on the user's module)",
        )
        reference = self._gradient
        assert reference is not None
        scale = float(np.linalg.norm(flat) + np.linalg.norm(reference)) or 1.0
        apart = float(np.linalg.norm(flat - reference)) / scale
        dtype = least_precise(*(_NUMPY_DTYPES[t.dtype] for t in params))
        how = "the model as it trains"
        if seen.dtype is not None:
            dtype = least_precise(dtype, _NUMPY_DTYPES[seen.dtype])
            how = f"under torch.autocast({seen.dtype}); the float64 shadow evaluates without it"
        if module is not self._module:
            how += ", compiled backward"
        if drew and apart > _RANDOM_DRAWS_APART:
            # Random draws in float32 and float64 need not match (torch.randn does not;
            # dropout's bernoulli does): the two sides may not have seen the same noise.
            self._notes[notes.GRADIENT] = (
                f"float64 shadow: the native {dtype} gradient differs by {apart:.1e}, and the "
                "loss draws random numbers, whose float32 and float64 draws can differ"
            )
            return
        self._notes[notes.GRADIENT] = (
            f"native {dtype} ({how}); the float64 shadow's differs by {apart:.1e}"
        )
        self._gradient = flat
        self._gradient_dtype = dtype
        if rescaled is not None:
            # Two resamplings of the rounding, added in quadrature: the backward's (the loss
            # rescaled) and the forward's (the parameters dithered by one rounding unit).
            samples = [
                flatten_gradient(
                    self.layout,
                    g,
                    to_array=_to_numpy,
                    missing="zero",
                    source="the native gradient (autograd on the user's module)",
                )
                - flat
                for g in (rescaled, *dithered)
            ]
            # Antithetic dithers: their mean cancels the true gradient's change along the
            # dither (linear in it), which a plain dither mistook for round-off by 30-300x
            # in a transformer block's attention weights; the roundings stay.
            self._spread = np.hypot(samples[0], (samples[1] + samples[2]) / 2.0)

    def _dithered_gradient(
        self, module: torch.nn.Module, params: list[torch.Tensor], unit: float
    ) -> tuple[torch.Tensor | None, ...]:
        """The native gradient with every parameter multiplied by ``1 +- unit`` (random signs,
        the same for both calls; ``unit``'s sign flips them), from the same RNG, buffer and
        generator state as the first native pass."""
        self._rng.replay()
        self._user_buffers.replay()
        self._user_generators.replay()
        with _Dithered(params, unit):
            loss = self._loss(module)
            return torch.autograd.grad(loss.reshape(()), params, allow_unused=True)

    def _requiring_grad(self) -> _RequiresGrad:
        return _RequiresGrad([slot.target for slot in self._slots])

    def _autograd(self, loss: torch.Tensor) -> FloatArray:
        targets = [slot.target for slot in self._slots]
        if not loss.requires_grad:
            raise _NoDependenceError(_NO_DEPENDENCE)
        try:
            grads = self._in_mode(torch.autograd.grad, loss.reshape(()), targets, allow_unused=True)
        except RuntimeError as exc:
            if _REENTRANT not in str(exc):
                raise
            grads = self._reentrant_gradient(targets, exc)
        if all(g is None for g in grads):
            raise _NoDependenceError(_NO_DEPENDENCE)
        missing = [s.name for s, g in zip(self._slots, grads, strict=True) if g is None]
        if missing:
            self._notes[notes.NO_GRADIENT] = ", ".join(missing)
        return flatten_gradient(
            self.layout,
            grads,
            to_array=_to_numpy,
            missing="zero",
            source="the analytic gradient (autograd)",
        )

    def _in_mode(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._shadow is not None:
            with Float64Mode():  # a custom backward may create tensors: default to float64
                return function(*args, **kwargs)
        return function(*args, **kwargs)

    def _reentrant_gradient(
        self, targets: list[torch.Tensor], error: RuntimeError
    ) -> tuple[torch.Tensor | None, ...]:
        """The gradient through ``torch.utils.checkpoint(..., use_reentrant=True)``.

        Such a checkpoint refuses ``torch.autograd.grad`` but supports ``.backward()``, as
        training uses it. The failed call freed the graph, so the loss is evaluated again
        and backpropagated; every ``.grad`` the backward pass can reach (the module's
        parameters and the graph's leaves) is saved first and put back after.
        """
        if self._module is None:
            raise GradientError(
                "the loss uses torch.utils.checkpoint(..., use_reentrant=True), whose "
                "recomputed parameters torch.autograd.grad cannot see; pass the module itself "
                "as params (check(loss, model) differentiates it with .backward()), or use "
                "use_reentrant=False, which PyTorch recommends"
            ) from error
        loss = self._loss_tensor(self._run(self._loss, grad_enabled=True)).reshape(())
        reached = [*targets, *self._presented.parameters(), *_graph_leaves(loss)]
        tensors = list({id(t): t for t in reached}.values())
        saved = _Grads(tensors)
        try:
            for tensor in tensors:
                tensor.grad = None
            self._in_mode(loss.backward)
            return tuple(t.grad for t in targets)
        finally:
            saved.restore()

    def _explicit_gradient(self) -> FloatArray:
        grad = self._grad
        value = self._run(grad, grad_enabled=True) if callable(grad) else grad
        leaves = self._gradient_leaves(value)
        # ``None`` for a tensor counts as zeros, as ``.grad`` is ``None`` when nothing flowed.
        flat = flatten_gradient(self.layout, leaves, to_array=_to_numpy, missing="zero")
        self._loss_dtype = least_precise(self._loss_dtype, *map(_leaf_dtype, leaves))
        # A float32 gradient handed over as float64 (``p.grad`` cloned inside the float64
        # shadow's mode) is judged as float32: its rounding is no disagreement.
        carried = carried_precision(flat)
        if least_precise(self._loss_dtype, carried) != self._loss_dtype:
            self._gradient_dtype = carried
            self._notes[notes.GRADIENT] = f"given; its values are {carried} numbers"
        return flat

    def _gradient_leaves(self, grad: Any) -> list[Any]:
        """A user-supplied gradient as one leaf per checked tensor, in layout order."""
        if self._module is None:  # a container: the gradient mirrors it
            by_path = dict(walk_like(self._template, grad))
            leaves: list[Any] = [None] * len(self.layout)
            for path, position in self._positions.items():
                leaves[position] = by_path[path]
            return leaves
        # A module: by name over named_parameters(), or in that order. A tied parameter's
        # other names may appear in a dict too.
        aliases = {name for name, _ in self._module.named_parameters(remove_duplicate=False)}
        return leaves_by_name(
            grad, self.layout.names, order="model.named_parameters()", ignored=aliases
        )

    # -- FlatView ----------------------------------------------------------------------------

    def original(self, segment: int) -> FloatArray:
        return self._slots[segment].original

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        self._writes += 1
        slot = self._slots[segment]
        if slot.exact:
            slot.set(index, values)
            return values
        stored = values.astype(slot.np_dtype)
        slot.set(index, stored)
        return stored.astype(np.float64)

    def reset(self, segment: int, index: IndexArray | None) -> None:
        self._slots[segment].reset(index)

    def write_element(self, segment: int, local: int, value: float) -> float:
        slot = self._slots[segment]
        if slot.flat is None:
            return super().write_element(segment, local, value)
        self._writes += 1
        stored = value if slot.exact else float(slot.np_dtype.type(value))
        slot.flat[local] = stored  # exact: stored is representable in the tensor's dtype
        return stored

    def reset_element(self, segment: int, local: int) -> None:
        slot = self._slots[segment]
        if slot.flat is None:
            super().reset_element(segment, local)
        else:
            slot.flat[local] = float(slot.original[local])  # the original came from this dtype

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._loss_dtype

    @property
    def gradient_dtype(self) -> np.dtype[Any]:
        return self._gradient_dtype if self._gradient_dtype is not None else self._loss_dtype

    def gradient_spread(self) -> FloatArray | None:
        return self._spread

    def gradient(self) -> FloatArray:
        if self._gradient is None:
            # Not computed with the first evaluation (the engine wrote before evaluating).
            self._value_and_gradient()
        if self._gradient is None:
            raise GradientError("the gradient could not be computed: the loss is not finite")
        return self._gradient

    @property
    def notes(self) -> dict[str, str | int | float | bool | None]:
        return dict(self._notes)

    # -- second order and forward mode (evaluated where the loss is: the shadow or in place) -

    def _refuse_given_grad(self) -> None:
        if self._grad is not None:
            raise SettingsError(
                "order=2 differentiates the loss twice with autograd, and a given gradient "
                "cannot be differentiated: leave grad unset"
            )

    def _tangents(self, vector: FloatArray) -> list[torch.Tensor]:
        return [
            torch.from_numpy(vector[segment.offset : segment.stop].reshape(slot.shape)).to(
                device=slot.device, dtype=slot.target.dtype
            )
            for segment, slot in zip(self.layout, self._slots, strict=True)
        ]

    def _graph_gradient(self, *, create_graph: bool) -> tuple[list[torch.Tensor], Any]:
        """The loss at the current values and its gradient (a graph of it if asked)."""
        targets = [slot.target for slot in self._slots]
        loss = self._loss_tensor(self._run(self._loss, grad_enabled=True))
        if not loss.requires_grad:
            raise _NoDependenceError(_NO_DEPENDENCE)
        grads = self._in_mode(
            torch.autograd.grad,
            loss.reshape(()),
            targets,
            create_graph=create_graph,
            allow_unused=True,
        )
        return targets, grads

    def gradient_at(self, displacement: FloatArray) -> tuple[FloatArray, FloatArray]:
        self._refuse_given_grad()
        taken = np.zeros_like(displacement)
        written: list[int] = []
        try:
            for s, (segment, slot) in enumerate(zip(self.layout, self._slots, strict=True)):
                part = displacement[segment.offset : segment.stop]
                if not part.any():
                    continue
                written.append(s)
                stored = self.write(s, None, slot.original + part)
                taken[segment.offset : segment.stop] = stored - slot.original
            with self._requiring_grad(), torch.enable_grad():
                _, grads = self._graph_gradient(create_graph=False)
        finally:
            for s in written:
                self.reset(s, None)
        flat = flatten_gradient(
            self.layout, grads, to_array=_to_numpy, missing="zero", source="autograd"
        )
        return flat, taken

    def hvp(self, vector: FloatArray) -> FloatArray:
        """``H v`` by double backward: the gradient of ``g . v``, with ``g`` built as a graph."""
        self._refuse_given_grad()
        with self._requiring_grad(), torch.enable_grad():
            targets, grads = self._graph_gradient(create_graph=True)
            terms = [
                (g * v).sum()
                for g, v in zip(grads, self._tangents(vector), strict=True)
                if g is not None and g.requires_grad
            ]
            if not terms:  # no gradient depends on the parameters: H v is 0 (or not built)
                return np.zeros(self.layout.size)
            product = self._in_mode(
                torch.autograd.grad, torch.stack(terms).sum(), targets, allow_unused=True
            )
        return flatten_gradient(
            self.layout,
            product,
            to_array=_to_numpy,
            missing="zero",
            source="the Hessian-vector product (double backward)",
        )

    def jvp(self, vector: FloatArray) -> float:
        """The loss's forward-mode derivative (``torch.autograd.forward_ad``) along ``vector``."""
        import torch.autograd.forward_ad as fwad

        tangents = self._tangents(vector)
        try:
            return self._forward_derivative(fwad, tangents)
        except NotImplementedError as exc:  # a custom Function without a jvp staticmethod
            raise GradientError(
                f"forward-mode AD cannot run through the loss: {exc} Give each custom "
                "autograd.Function a jvp staticmethod (saving what it needs with "
                "ctx.save_for_forward), or check in reverse mode"
            ) from exc

    def _forward_derivative(self, fwad: Any, tangents: list[torch.Tensor]) -> float:
        with fwad.dual_level():
            duals = [
                fwad.make_dual(slot.target.detach(), t)
                for slot, t in zip(self._slots, tangents, strict=True)
            ]
            if self._module is not None:
                names = [slot.name for slot in self._slots]
                # functional_call swaps the module's parameters for the duals and back: a
                # Ctrl-C between the two would leave the swap, so it waits until after.
                with deferred():
                    loss = self._run(
                        lambda module: torch.func.functional_call(
                            _LossOf(module, self._loss),
                            dict(zip(["m." + n for n in names], duals, strict=True)),
                            (),
                        ),
                        grad_enabled=False,
                    )
            else:
                leaves = [
                    duals[self._positions[path]] if path in self._positions else leaf
                    for path, leaf in walk(self._template, ())
                ]
                presented = rebuild(self._template, leaves)
                loss = self._run(lambda _: self._loss(presented), grad_enabled=False)
            tangent = fwad.unpack_dual(self._loss_tensor(loss)).tangent
        return 0.0 if tangent is None else float(tangent.reshape(()).item())

    def drifted(self) -> list[int]:
        """Tensors the loss changed: the ones it read (the shadow's or the user's), and the
        user's own when the gradient came from the module as it trains."""
        with torch.no_grad():
            return [s for s, slot in enumerate(self._slots) if slot.drifted()]

    def _restore_grad_mode(self) -> None:
        torch.set_grad_enabled(self._grad_enabled)

    def restore(self) -> None:
        """Parameters, buffers, ``.grad`` fields, RNG states and TF32 back, bit for bit."""
        # Evaluations in a shadow never write to the user's tensors, but a loss may, through
        # its closure (an in-place update, a train-mode forward of the user's module).
        steps: list[Callable[[], None]] = [slot.restore_user for slot in self._slots]
        steps.append(self._user_buffers.restore)
        steps.append(self._user_generators.replay)
        if self._grads is not None:
            steps.append(self._grads.restore)
        steps.append(self._rng.replay)
        if self._tf32 is not None:
            steps.append(self._tf32.restore)
        with torch.no_grad():
            failure = run_all(steps)
        self._restore_grad_mode()  # after the no_grad block, which would undo it
        if failure is not None:
            raise failure


class _LossOf(torch.nn.Module):
    """The loss as a module's forward, so ``functional_call`` can swap the parameters it reads."""

    def __init__(self, module: torch.nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.m = module
        self._loss_function = loss

    def forward(self) -> Any:
        return self._loss_function(self.m)


class _RequiresGrad:
    """Tensors that do not require grad are switched on for the gradient call, then back."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.off = [t for t in tensors if not t.requires_grad]

    @transition
    def __enter__(self) -> None:
        with deferred():  # all switched or none, whenever a Ctrl-C comes
            for tensor in self.off:
                tensor.requires_grad_(True)
        entered(self._switch_back)

    def _switch_back(self) -> None:
        for tensor in self.off:
            tensor.requires_grad_(False)

    @transition
    def __exit__(self, *exc: object) -> None:
        with deferred():
            self._switch_back()
        left()


def _graph_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors whose ``.grad`` a backward pass from ``loss`` accumulates into."""
    leaves: list[torch.Tensor] = []
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # an AccumulateGrad node
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _to_numpy(value: Any) -> Any:
    """A gradient leaf as NumPy reads it: a tensor dense, detached, on the CPU, float64."""
    if isinstance(value, torch.Tensor):
        tensor: torch.Tensor = value
        if tensor.layout != torch.strided:  # nn.Embedding(sparse=True) gives sparse gradients
            tensor = tensor.to_dense()
        return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()
    return value


def _leaf_dtype(value: Any) -> np.dtype[Any]:
    if isinstance(value, torch.Tensor):
        return _LOSS_DTYPES.get(value.dtype, np.dtype(np.float64))
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return dtype
    return np.dtype(np.float64)


# The factor the loss is scaled by for a half-precision gradient's second backward (the
# spread sample of gradguard.engine.spread): not a power of two, so every rounding in the
# backward lands differently, and close to 1, so nothing overflows or underflows.
_RESCALE = 4.0 / 3.0
# The relative size of the dither of a half-precision gradient's parameters: one unit
# round-off of the dtype the gradient is computed in.
_DITHER = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def _dither_unit(kinds: set[torch.dtype | None]) -> float | None:
    """The dither of the least precise dtype the native gradient is computed in (``None``:
    a float64 gradient, nothing to measure)."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        if dtype in kinds:
            return _DITHER[dtype]
    return None


_DITHER_SEED = 0x6D70  # a private generator: the global RNG is never drawn from


class _Dithered:
    """Every parameter multiplied by ``1 +- unit`` (random signs), then put back bit-exactly.

    The forward's rounding resampled: a native gradient at dithered values differs from the
    first by what rounding the forward's values once more does (a ReLU mask flipped by a
    rounded pre-activation, a cancelling sum), plus the true gradient's change along the
    dither, which the mean of two opposite dithers cancels. A bug in the backward is in every
    one of them and cancels.
    """

    def __init__(self, params: list[torch.Tensor], unit: float) -> None:
        self.params = params
        self.unit = unit
        self.saved: list[torch.Tensor] = []

    @transition
    def __enter__(self) -> None:
        generator = torch.Generator().manual_seed(_DITHER_SEED)
        values = []
        for p in self.params:
            signs = torch.randint(0, 2, p.shape, generator=generator).to(p.device) * 2.0 - 1.0
            values.append((p.detach().double() * (1.0 + self.unit * signs)).to(p.dtype))
        with deferred(), torch.no_grad():  # all written or none, whenever a Ctrl-C comes
            self.saved = [p.detach().clone() for p in self.params]
            for p, value in zip(self.params, values, strict=True):
                p.copy_(value)
        entered(self._put_back)

    def _put_back(self) -> None:
        with torch.no_grad():
            for p, value in zip(self.params, self.saved, strict=True):
                p.copy_(value)

    @transition
    def __exit__(self, *exc: object) -> None:
        with deferred():
            self._put_back()
        left()


def _rescaled_gradient(
    loss: torch.Tensor, params: list[torch.Tensor]
) -> tuple[torch.Tensor | None, ...] | None:
    """The gradient again, from the same graph with the loss scaled by ``_RESCALE`` and the
    result divided back: the same mathematics, different rounding. ``None`` where the graph
    cannot be run twice (a compiled backward that frees its buffers)."""
    factor = torch.full((), _RESCALE, dtype=loss.dtype, device=loss.device)
    exact = float(factor)  # the factor as the loss's dtype holds it
    try:
        grads = torch.autograd.grad(loss, params, grad_outputs=factor, allow_unused=True)
    except RuntimeError:
        return None
    return tuple(None if g is None else g.double() / exact for g in grads)


class TorchAdapter(Adapter):
    """Claims torch modules, tensors and Parameters, and dicts/lists/tuples of tensors.

    Args:
        shadow: Evaluate float32/float16 modules in a float64 shadow copy (the default).
            ``False`` evaluates every model in place, in its own dtype (the measurements in
            docs/pytorch.md compare the two).
        native_gradient: With a shadow, take the analytic gradient from the model as it trains
            (its own dtype) and the finite differences from the shadow (the default), so a
            backward that is wrong only in float32 is caught. ``False`` checks the shadow's
            float64 gradient.
    """

    name: ClassVar[str] = "torch"
    autodiff: ClassVar[bool] = True

    def __init__(self, *, shadow: bool = True, native_gradient: bool = True) -> None:
        self.shadow = shadow
        self.native_gradient = native_gradient

    def open(self, params: Any, loss: Callable[..., Any], grad: Any) -> FlatView:
        from gradguard_torch import _sharded  # imports _adapter: loaded on first use

        if _sharded.is_sharded(params):  # FSDP2 / tensor parallel: a collective check
            return _sharded.ShardedView(params, loss, grad)
        _sharded.refuse_sharded_tree(params)
        return TorchView(
            params, loss, grad, shadow=self.shadow, native_gradient=self.native_gradient
        )

    def lock_keys(self, params: Any) -> Iterable[Hashable]:
        """The storages of the tensors (views of one storage are one key), and the module."""
        keys: set[Hashable] = {("object", id(params))}
        tensors: list[torch.Tensor]
        if isinstance(params, torch.nn.Module):
            tensors = list(unwrap_module(params).parameters())
        else:
            tensors = [leaf for _, leaf in walk(params, ()) if isinstance(leaf, torch.Tensor)]
        for tensor in tensors:
            try:
                storage = tensor.untyped_storage().data_ptr()
            except Exception:  # no storage to name (sparse, meta, a wrapper subclass): open() says
                keys.add(("object", id(tensor)))
            else:
                keys.add(("torch", str(tensor.device), storage))
        return keys
