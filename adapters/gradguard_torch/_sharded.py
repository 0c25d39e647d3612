"""Sharded models (FSDP2, tensor parallel): parameters that are DTensors, checked collectively.

No process holds such a model, so every rank takes part in the check, and every rank must
call it (``gradguard.check`` is then a collective call, like a training step):

* **Agreed choices.** The seed is rank 0's, broadcast (front doors ask the
  ``gradguard_collective_seed`` hook before a check), so every rank draws the same coordinates
  and directions. The view presents the *unsharded* layout (global shapes, the names of
  ``named_parameters()``), so the engine generates each direction by global element index:
  the same check on 1, 2 or 4 ranks, or on the unsharded model, probes the same directions.
* **Writes by owners only.** Each rank writes a perturbation only into the elements its local
  shard holds (``p.to_local()``, under ``no_grad``), found through a map from local to global
  element index computed once with DTensor's own sharding (``distribute_tensor`` of each
  dimension's indices, so ``_StridedShard`` on a 2-D mesh is handled; a contiguous shard keeps
  only its first index). Replicated elements are written by every rank that holds them.
* **No whole tensors.** The view is ``partitioned``: the engine never asks it for a whole
  original or gradient, but for reductions (norms, elements, ``g . v``, non-zero counts), which
  each rank computes on its shard and one collective on gradguard's group combines (a sum
  counts one replica of each element). A direction probe's share of ``g . v`` rides along in
  the agreement of its second evaluation.
* **Collective evaluations.** Every rank evaluates the loss for every probe (the model's own
  collectives run inside its forward); then one small all-gather agrees the loss value (the mean
  over ranks, exactly the value when all ranks agree) and tells every rank whether a rank's loss
  raised. A failure on any rank becomes the same :class:`ShardedLossError`, naming the rank, on
  every rank.
* **The gradient under test is the model's own**: ``loss.backward()`` fills ``p.grad`` as in
  training (FSDP2 reduce-scatters and averages), each rank keeps its local shard of it (as
  float64), and every ``.grad`` is put back as it was.
* **Exact restoration** is local: each rank writes its saved shards, buffers, ``.grad`` fields
  and RNG states back, with no collective, so it happens even when a collective failed.

``docs/distributed.md`` has the measurements behind these choices.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from gradguard.engine.directions import Direction
from gradguard.engine.layout import Layout
from gradguard.engine.values import transposed_positions
from gradguard.errors import GradientError, InvalidParamsError, LossError
from gradguard.kit import notes
from gradguard.kit.contract import FlatView, IndexArray
from gradguard.kit.dtypes import least_precise
from gradguard.kit.restoring import run_all
from gradguard_torch._adapter import (
    _LOSS_DTYPES,
    _NO_DEPENDENCE,
    _NUMPY_DTYPES,
    _Buffers,
    _check_tensor,
    _Grads,
    _module_entries,
    _RngState,
    unwrap_module,
)
from gradguard_torch._compat import default_store
from gradguard_torch._tf32 import Tf32Switch

__all__ = [
    "ShardedLossError",
    "ShardedView",
    "agree_seed",
    "is_sharded",
    "refuse_sharded_tree",
]

FloatArray = npt.NDArray[np.float64]

# The most probed coordinates whose owning ranks a report lists (a check probes ~8-40).
# Elements per block of a shard in per-probe work (8 MiB of float64).
_CHUNK = 1 << 20
_MAX_OWNERS = 64
_STORE_PREFIX = "gradguard/sharded-failure"


class ShardedLossError(LossError):
    """A rank's loss (or its part of a collective) failed during a collective check.

    Raised on every rank with the same message, after every rank restored its parameters.

    Attributes:
        ranks: The ranks whose evaluation failed, the first to fail first.
    """

    def __init__(self, message: str, ranks: tuple[int, ...]) -> None:
        super().__init__(message)
        self.ranks = ranks


def _dtensor_type() -> type | None:
    """DTensor, if ``torch.distributed.tensor`` was imported (a model holding one imported it)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_sharded(params: object) -> bool:
    """Whether ``params`` is a module with at least one DTensor parameter (FSDP2, TP)."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(params, torch.nn.Module):
        return False
    return any(isinstance(p, dtensor) for p in unwrap_module(params).parameters())


def refuse_sharded_tree(params: object) -> None:
    """Refuse DTensors given loose (not in their module), naming the fix.

    Raises:
        InvalidParamsError: ``params`` is a container holding a DTensor.
    """
    dtensor = _dtensor_type()
    if dtensor is None or isinstance(params, torch.nn.Module):
        return
    stack = [params]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, dtensor):
            raise InvalidParamsError(
                "params holds a DTensor (a shard of a parameter of an FSDP2 or tensor-parallel "
                "model); pass the sharded module itself, gradguard.check(loss, model), and call "
                "the check on every rank"
            )


# -- the coordination group --------------------------------------------------------------------

_GROUP: tuple[object, dist.ProcessGroup] | None = None


def _coordination_group() -> dist.ProcessGroup:
    """gradguard's own gloo group over every rank, created once per default process group.

    The model's collectives run on its meshes' groups (NCCL on GPUs); agreement on loss values
    and failures runs on this separate CPU group, with the default group's timeout, so that a
    rank that failed in its loss never pairs its message with a collective of the model.
    Creating it is itself collective: the first sharded check does it on every rank.
    """
    global _GROUP
    world = dist.group.WORLD
    if _GROUP is not None and _GROUP[0] is world:
        return _GROUP[1]
    group = dist.new_group(backend="gloo", timeout=default_store().timeout)
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    _GROUP = (world, group)
    return group


def _require_process_group(module: torch.nn.Module) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidParamsError(
            f"the {type(module).__name__} has DTensor parameters (FSDP2 or tensor parallel) but "
            "no torch.distributed process group is initialized; check it inside the distributed "
            "run that built it, calling gradguard.check on every rank"
        )


def _broadcast_int(value: int, group: dist.ProcessGroup) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(tensor, group_src=0, group=group)
    return int(tensor.item())


def agree_seed(params: object, seed: int) -> int | None:
    """Rank 0's seed on every rank, for a sharded module; ``None`` for anything else.

    Collective for a sharded module: every rank must call it.
    """
    if not is_sharded(params):
        return None
    assert isinstance(params, torch.nn.Module)
    _require_process_group(params)
    return _broadcast_int(int(seed) % 2**63, _coordination_group())


# -- one checked tensor ------------------------------------------------------------------------


def _along(direction: Direction, where: tuple[int, int] | IndexArray) -> FloatArray:
    """A direction's values at a block's global positions."""
    if isinstance(where, tuple):
        return direction.values_between(*where)
    return direction.values(where)


def _local_positions(
    shape: tuple[int, ...], mesh: Any, placements: Any, local_shape: tuple[int, ...]
) -> IndexArray:
    """The global flat position of each element of this rank's shard, in the shard's order.

    Every placement of a parameter (``Shard``, ``_StridedShard``, ``Replicate``) acts on one
    tensor dimension, so a shard is the product of one set of global coordinates per dimension.
    Each set comes from DTensor's own sharding of that dimension's ``arange`` (no communication,
    memory the sum of the dimensions), which handles ``_StridedShard`` on a 2-D mesh.
    """
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    coordinates = []
    for d, n in enumerate(shape):
        mapped: list[Any] = []
        for placement in placements:
            # _StridedShard is not a Shard subclass in every torch version: test it first.
            if isinstance(placement, _StridedShard) and placement.dim % len(shape) == d:
                mapped.append(_StridedShard(0, split_factor=placement.split_factor))
            elif isinstance(placement, Shard) and placement.dim % len(shape) == d:
                mapped.append(Shard(0))
            else:
                mapped.append(Replicate())
        ids = torch.arange(n, dtype=torch.int64)
        local = distribute_tensor(ids, mesh, mapped, src_data_rank=None).to_local()
        coordinates.append(local.cpu().numpy().astype(np.intp))
    if tuple(c.size for c in coordinates) != local_shape:
        raise InvalidParamsError(
            f"gradguard cannot map a local shard of shape {local_shape} to global element "
            f"indices for placements {tuple(placements)}; please report it"
        )
    strides = np.cumprod((1, *shape[:0:-1]))[::-1] if shape else np.ones(0, dtype=np.intp)
    positions = np.zeros(local_shape, dtype=np.intp)
    for d, (c, stride) in enumerate(zip(coordinates, strides, strict=True)):
        view = [1] * len(shape)
        view[d] = c.size
        positions += (c * int(stride)).reshape(view)
    return positions.reshape(-1)


class _ShardSlot:
    """One checked parameter: its local shard, where the shard sits in the whole tensor, its
    saved values and (after the first evaluation) its local gradient.

    Nothing of global size is kept: the position map is a range for a contiguous shard
    (FSDP2's ``Shard(0)``) and an index array only for other layouts.
    """

    def __init__(self, name: str, param: torch.Tensor, dtensor: type | None) -> None:
        self.name = name
        self.param = param
        self.shape = tuple(param.shape)
        self.size = int(math.prod(self.shape))
        self.np_dtype = _NUMPY_DTYPES[param.dtype]
        self.exact = self.np_dtype == np.float64
        self.sharded = dtensor is not None and isinstance(param, dtensor)
        self._positions: IndexArray | None = None
        self._start = 0
        self._sorted: IndexArray | None = None
        self._order: IndexArray | None = None
        with torch.no_grad():
            if self.sharded:
                local = param.to_local()  # type: ignore[attr-defined]
                mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]
                self.mesh, self.placements_of = mesh, placements
                self.placements = f"{tuple(placements)} on mesh {tuple(mesh.shape)}"
                positions = _local_positions(self.shape, mesh, placements, tuple(local.shape))
                start = int(positions[0]) if positions.size else 0
                if np.array_equal(positions, np.arange(start, start + positions.size)):
                    self._start = start  # a contiguous block: no map to keep
                else:
                    self._positions = positions
                    order = np.argsort(positions, kind="stable")
                    self._sorted = positions[order]
                    self._order = order.astype(np.intp)
            else:  # a plain parameter of a sharded model: replicated, every rank writes it
                local = param
                self.placements = "replicated (not a DTensor)"
        self.local_size = int(local.numel())
        self.data = local.data  # writes bypass autograd's version counter
        if not self.data.is_contiguous():
            raise InvalidParamsError(
                f"parameter {name!r}: its local shard is not contiguous "
                f"({self.placements}); gradguard writes shards through a flat view"
            )
        self.flat = self.data.view(-1)
        self.saved = self.data.clone()
        self.saved_flat = self.saved.view(-1)
        # Whether this rank's sums count this shard (one replica of each element counts).
        self.primary = True
        self.grad: FloatArray = np.zeros(0)  # the local gradient, float64, after evaluation

    def positions(self) -> IndexArray:
        """The global flat positions of the local elements, in local order."""
        if self._positions is not None:
            return self._positions
        if not self.sharded:
            return np.arange(self.size, dtype=np.intp)
        return np.arange(self._start, self._start + self.local_size, dtype=np.intp)

    def fingerprint(self) -> tuple[int, int, int]:
        """What identifies this shard's set of elements (replicas share it): its size, the sum
        of its global positions and its first one."""
        n = self.local_size
        if not n:
            return 0, 0, -1
        if self._positions is None:
            first = self._start if self.sharded else 0
            return n, n * first + n * (n - 1) // 2, first
        return n, int(self._positions.sum()), int(self._positions[0])

    def saved64(self, a: int = 0, b: int | None = None) -> FloatArray:
        """The saved local values ``a:b``, as float64."""
        part = self.saved_flat[a:b].detach()
        values: FloatArray = part.to(device="cpu", dtype=torch.float64).numpy()
        return values

    def chunks(self) -> Iterator[tuple[int, int, tuple[int, int] | IndexArray]]:
        """The local shard in blocks of ``_CHUNK`` elements: ``(a, b, where)``, ``where`` the
        block's global positions, a ``(first, stop)`` range for a contiguous shard.

        Per-probe work goes block by block, so its temporaries stay a few MiB whatever the
        size of the shard.
        """
        base = self._start if self.sharded else 0
        for a in range(0, self.local_size, _CHUNK):
            b = min(a + _CHUNK, self.local_size)
            where = (base + a, base + b) if self._positions is None else self._positions[a:b]
            yield a, b, where

    def position(self, global_index: int) -> int | None:
        """Where element ``global_index`` sits in this rank's shard, or ``None`` if elsewhere."""
        if not self.sharded:
            return global_index
        if self._sorted is None:
            local = global_index - self._start
            return local if 0 <= local < self.local_size else None
        assert self._order is not None
        k = int(np.searchsorted(self._sorted, global_index))
        if k < self._sorted.size and int(self._sorted[k]) == global_index:
            return int(self._order[k])
        return None

    def write(self, index: IndexArray | None, stored: npt.NDArray[Any]) -> None:
        """Write ``stored`` (already in the tensor's dtype) at global positions, own shard only."""
        if index is None:
            if not self.sharded:
                local = stored
            elif self._positions is None:
                local = stored[self._start : self._start + self.local_size]
            else:
                local = stored[self._positions]
            self.write_local(local)
            return
        for i, value in zip(index, stored, strict=True):
            pos = self.position(int(i))
            if pos is not None:
                self.flat[pos] = float(value)

    def write_local(self, local: npt.NDArray[Any]) -> None:
        """Write a whole local shard (already in the tensor's dtype)."""
        source = torch.from_numpy(np.ascontiguousarray(local)).to(self.data.device)
        self.flat.copy_(source)

    def reset(self, index: IndexArray | None) -> None:
        if index is None:
            self.data.copy_(self.saved)
            return
        for i in index:
            pos = self.position(int(i))
            if pos is not None:
                self.flat[pos] = self.saved_flat[pos]

    def restore(self) -> None:
        self.data.copy_(self.saved)


def _sharding_note(slots: list[_ShardSlot]) -> str:
    """How the tensors are laid out, grouped by placements: ``"(Shard(dim=0),) ...: a, b"``."""
    groups: dict[str, list[str]] = {}
    for slot in slots:
        groups.setdefault(slot.placements, []).append(slot.name)
    if len(groups) == 1:
        return f"{next(iter(groups))}: every tensor"
    return "; ".join(f"{placements}: {', '.join(names)}" for placements, names in groups.items())


# -- the view ----------------------------------------------------------------------------------


class ShardedView(FlatView):
    """A collective flat view over a module whose parameters are DTensors.

    Opening it is collective (the unsharded values are gathered); so is every evaluation.
    """

    adapter = "torch"
    joint_writes = True  # each rank writes its own shard of every tensor of a joint probe
    partitioned = True  # no rank holds whole tensors: the view serves the engine's reductions

    def __init__(self, module: torch.nn.Module, loss: Callable[..., Any], grad: Any) -> None:
        module = unwrap_module(module)
        if grad is not None:
            raise GradientError(
                "a sharded model's gradient under test is its own (loss.backward() fills the "
                "sharded .grad fields as in training); pass grad=None"
            )
        _require_process_group(module)
        self._module = module
        self._loss = loss
        self._group = _coordination_group()
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        entries = _module_entries(module)
        for name, tensor in entries:
            _check_tensor(name, tensor, tree=False)
        dtensor = _dtensor_type()
        # Rank 0's id names this check's failure messages in the store on every rank.
        self._check_id = _broadcast_int(secrets.randbits(62), self._group)
        self._slots = [_ShardSlot(name, p, dtensor) for name, p in entries]
        self._agree_replicas()
        self.layout = Layout.from_tensors(
            [(slot.name, slot.shape, slot.np_dtype) for slot in self._slots]
        )
        self._buffers = _Buffers(module)
        self._rng = _RngState()
        self._grads = _Grads(list(module.parameters()))
        self._grad_enabled = torch.is_grad_enabled()
        self._loss_dtype: np.dtype[Any] = least_precise(*(s.np_dtype for s in self._slots))
        self._seen_loss_dtype: torch.dtype | None = None
        self._first = True
        self._has_gradient = False
        self._elements: dict[tuple[int, int], tuple[float, float]] = {}
        self._along: dict[int, float] = {}  # per tensor, g . v of its last probe (agreed)
        # Per tensor written at -step since the last evaluation: this rank's share of g . v.
        self._pending: dict[int, float] = {}
        self._probed: dict[tuple[int, int], bool] = {}  # (segment, element) -> this rank owns it
        self._owners: str | None = None
        self._notes: dict[str, str | int | float | bool | None] = {
            notes.EVALUATION: (
                f"collective over {self.world} ranks, in place, in the parameters' dtype "
                "(DTensor parameters: every rank checks; no float64 shadow of a sharded model)"
            ),
            "sharding": _sharding_note(self._slots),
        }
        self._tf32: Tf32Switch | None = None
        device = self._slots[0].data.device
        if device.type == "cuda":
            self._tf32 = Tf32Switch.off()
            self._notes[notes.TF32] = self._tf32.note(gpu=True)

    # -- agreement across ranks ----------------------------------------------------------------

    def _store_key(self, rank: int) -> str:
        return f"{_STORE_PREFIX}/{self._check_id}/{rank}"

    def _post(self, failure: BaseException) -> None:
        """Leave this rank's failure in the store, for ranks blocked in the model's collectives."""
        message = f"{time.time():.6f}|{type(failure).__name__}: {failure}"
        # If the store is gone too, the all-gather that follows still tells the others.
        with contextlib.suppress(Exception):
            default_store().set(self._store_key(self.rank), message)

    def _posted(self, ranks: range | list[int]) -> list[tuple[float, int, str]]:
        """The failures other ranks left in the store, earliest first."""
        store = default_store()
        found = []
        for rank in ranks:
            key = self._store_key(rank)
            try:
                if not store.check([key]):
                    continue
                stamp, _, message = store.get(key).decode().partition("|")
                found.append((float(stamp), rank, message))
            except Exception:  # an unreachable store: name what this rank knows
                continue
        return sorted(found)

    def _agree(
        self, value: float | None, failure: BaseException | None, phase: str = "loss"
    ) -> float:
        """Every rank's value and failure flag, exchanged; the agreed value, or the error.

        ``phase`` names what ran (``"loss"``, ``"backward pass"``) in the error message.
        """
        if failure is not None:
            self._post(failure)
        # A direction probe's shares of g . v ride along (write_along left them pending, one
        # per tensor of a joint probe, the same tensors on every rank): the probe's analytic
        # side costs no collective of its own.
        pending, self._pending = self._pending, {}
        mine = torch.tensor(
            [
                math.nan if value is None else value,
                0.0 if failure is None else 1.0,
                *pending.values(),
            ],
            dtype=torch.float64,
        )
        table = [torch.empty_like(mine) for _ in range(self.world)]
        try:
            dist.all_gather(table, mine, group=self._group)
        except Exception as exc:  # a rank left, or the group timed out waiting for one
            raise self._error(self._posted(range(self.world)), exc, phase) from (failure or exc)
        rows = torch.stack(table).numpy()
        agreed = np.sum(rows[:, 2:], axis=0)
        self._along.update((s, float(v)) for s, v in zip(pending, agreed, strict=True))
        failed = [int(r) for r in np.flatnonzero(rows[:, 1] > 0.0)]
        if failed:
            raise self._error(self._posted(failed), None, phase) from failure
        values = rows[:, 0]
        bad = [int(r) for r in np.flatnonzero(~np.isfinite(values))]
        if bad and len(bad) < self.world:  # all non-finite: the engine's LossError says so
            raise ShardedLossError(
                f"the {phase} is {values[bad[0]]} on rank(s) {', '.join(map(str, bad))} of "
                f"{self.world} and finite on the others, during a collective gradient check; "
                "check those ranks' data. Every rank stopped the check and restored its "
                "parameters",
                tuple(bad),
            )
        if bool(np.all(values == values[0])):
            return float(values[0])
        return float(np.mean(values))  # different data per rank: the loss training averages

    def _error(
        self,
        posted: list[tuple[float, int, str]],
        collective: BaseException | None,
        phase: str,
    ) -> ShardedLossError:
        if not posted:
            assert collective is not None
            return ShardedLossError(
                f"the collective check failed on rank {self.rank} of {self.world}: "
                f"{type(collective).__name__}: {collective}; no rank reported a failure of its "
                "loss (did every rank call the check, with the same model?). Parameters were "
                "restored on this rank",
                (self.rank,),
            )
        ranks = tuple(rank for _, rank, _ in posted)
        first_rank, first = posted[0][1], posted[0][2]
        if len(posted) == self.world and all(message == first for _, _, message in posted):
            where, fix = f"on every rank (all {self.world})", "the loss"
            others = ""
        else:
            where, fix = f"on rank {first_rank} of {self.world}", f"the loss on rank {first_rank}"
            others = "".join(f"; then rank {rank}: {message}" for _, rank, message in posted[1:])
        return ShardedLossError(
            f"the {phase} raised {where} during a collective gradient check: {first}{others}. "
            f"Every rank stopped the check and restored its parameters; fix {fix} (its data, "
            "its shapes, a custom backward) and check again",
            ranks,
        )

    # -- evaluations ---------------------------------------------------------------------------

    def _call(self, *, grad_enabled: bool) -> torch.Tensor:
        self._rng.replay()
        self._buffers.replay()
        with torch.set_grad_enabled(grad_enabled):
            value = self._loss(self._module)
        self._buffers.watch()
        return self._loss_tensor(value)

    def _loss_tensor(self, value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise LossError(
                f"the loss returned a {type(value).__name__}, not a tensor; a sharded model is "
                "differentiated with loss.backward(), so return the tensor itself"
            )
        dtensor = _dtensor_type()
        if dtensor is not None and isinstance(value, dtensor):
            value = value.full_tensor()  # type: ignore[attr-defined]
        assert isinstance(value, torch.Tensor)
        if value.numel() != 1 or value.dtype not in _LOSS_DTYPES:
            raise LossError(
                f"the loss returned a tensor of shape {tuple(value.shape)} and dtype "
                f"{value.dtype}; it must return a one-element floating tensor (reduce it)"
            )
        if value.dtype is not self._seen_loss_dtype:
            self._seen_loss_dtype = value.dtype
            self._loss_dtype = least_precise(self._loss_dtype, _LOSS_DTYPES[value.dtype])
        return value

    def evaluate(self) -> float:
        if self._first:
            return self._first_evaluation()
        value: float | None = None
        failure: Exception | None = None
        try:
            value = float(self._call(grad_enabled=False).item())
        except Exception as exc:
            failure = exc
        return self._agree(value, failure)

    def _first_evaluation(self) -> float:
        """The loss at the unperturbed point, then the model's own gradient (``.grad``)."""
        self._first = False
        loss: torch.Tensor | None = None
        value: float | None = None
        failure: Exception | None = None
        for parameter in self._module.parameters():
            parameter.grad = None  # FSDP2 would accumulate into a gradient left from training
        try:
            with torch.enable_grad():
                loss = self._call(grad_enabled=True)
                value = float(loss.item())
        except Exception as exc:
            failure = exc
        agreed = self._agree(value, failure)
        if not math.isfinite(agreed):
            return agreed  # the engine reports the loss, on every rank alike
        assert loss is not None
        try:
            if not loss.requires_grad:
                raise LossError(_NO_DEPENDENCE)
            with torch.enable_grad():
                loss.reshape(()).backward()  # type: ignore[no-untyped-call]  # untyped in 2.13
        except Exception as exc:
            failure = exc
        self._agree(0.0, failure, "backward pass")
        self._local_gradients()
        self._grads.restore()
        return agreed

    def _local_gradients(self) -> None:
        """Each tensor's local gradient shard, as float64, aligned with its local values.

        Nothing is gathered. A gradient whose placements differ from its parameter's (a
        ``Partial`` sum) is redistributed to the parameter's; a plain parameter's is averaged
        over ranks (different data per rank, as for the loss). A missing gradient counts as
        zero and is named in the notes; a non-finite one is refused on every rank alike.
        """
        dtensor = _dtensor_type()
        missing = []
        for slot in self._slots:
            grad = slot.param.grad
            if grad is None:
                missing.append(slot.name)
                slot.grad = np.zeros(slot.local_size)
                continue
            if dtensor is not None and isinstance(grad, dtensor):
                shard: Any = grad
                if tuple(shard.placements) != tuple(slot.placements_of):
                    shard = shard.redistribute(slot.mesh, slot.placements_of)
                local = shard.to_local()
            else:  # a replicated parameter: the mean over ranks, as for the loss
                local = grad.detach().to(device="cpu", dtype=torch.float64).clone()
                dist.all_reduce(local, group=self._group)
                local = local / self.world
            slot.grad = local.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
        if missing:
            self._notes[notes.NO_GRADIENT] = ", ".join(missing)
        bad = self._reduce(
            np.array([float(np.count_nonzero(~np.isfinite(slot.grad))) for slot in self._slots])
        )
        for slot, count in zip(self._slots, bad, strict=True):
            if count:
                raise GradientError(
                    f"the sharded gradient for {slot.name!r} (shape {slot.shape}) holds "
                    f"{int(count)} non-finite value(s) (summed over ranks); a NaN or an infinity "
                    "in the backward pass: check the loss and any custom backward for a division "
                    "by zero, a log of 0 or an overflow"
                )
        self._has_gradient = True

    # -- collectives of the reductions ----------------------------------------------------------

    def _agree_replicas(self) -> None:
        """Decide, once, which rank's shard counts in sums (one replica of every element).

        Ranks whose shards hold the same elements (a ``Replicate`` mesh dimension, a layer on
        a sub-mesh, a plain parameter) are replicas: only the lowest of them counts.
        """
        mine = torch.tensor([slot.fingerprint() for slot in self._slots], dtype=torch.int64)
        table = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(table, mine, group=self._group)
        rows = torch.stack(table).numpy()  # (rank, slot, fingerprint)
        for t, slot in enumerate(self._slots):
            first = [
                r
                for r in range(self.world)
                if rows[r, t, 0] > 0
                and not any(np.array_equal(rows[q, t], rows[r, t]) for q in range(r))
            ]
            slot.primary = self.rank in first
            # The counted shards must hold every element once: sizes and positions add up.
            count, total = int(rows[first, t, 0].sum()), int(rows[first, t, 1].sum())
            if count != slot.size or total != slot.size * (slot.size - 1) // 2:
                raise InvalidParamsError(
                    f"parameter {slot.name!r} ({slot.placements}): its shards over the ranks "
                    "do not hold every element exactly once by gradguard's map of local to "
                    "global element indices; please report it"
                )

    def _reduce(self, values: FloatArray, op: Any = None) -> FloatArray:
        """Element-wise sum (or ``op``) over ranks, on gradguard's own group."""
        tensor = torch.from_numpy(np.array(values, dtype=np.float64))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op, group=self._group)
        return tensor.numpy()

    def _gather_rows(self, row: FloatArray) -> FloatArray:
        """Every rank's ``row``, stacked: shape (world, len(row))."""
        mine = torch.from_numpy(np.array(row, dtype=np.float64))
        table = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(table, mine, group=self._group)
        return torch.stack(table).numpy()

    def _from_owners(self, segment: int, positions: IndexArray, local: FloatArray) -> FloatArray:
        """The values at global ``positions`` from the ranks that hold them (the lowest one).

        ``local[k]`` is this rank's value when it holds ``positions[k]``.
        """
        slot = self._slots[segment]
        if not slot.sharded:
            return local
        held = np.array([slot.position(int(i)) is not None for i in positions], dtype=np.float64)
        rows = self._gather_rows(np.concatenate([held, np.where(held > 0, local, 0.0)]))
        n = positions.size
        owner = np.argmax(rows[:, :n] > 0, axis=0)  # the lowest rank holding each
        values: FloatArray = rows[owner, n + np.arange(n)]
        return values

    # -- the engine's reductions (FlatView, partitioned) ------------------------------------------

    def original_summary(self) -> tuple[FloatArray, FloatArray]:
        squares, largest = np.zeros(len(self._slots)), np.zeros(len(self._slots))
        for t, slot in enumerate(self._slots):
            for a, b, _ in slot.chunks():
                x = slot.saved64(a, b)
                squares[t] += float(np.dot(x, x)) if slot.primary else 0.0
                largest[t] = max(largest[t], float(np.max(np.abs(x))))
        return self._reduce(squares), self._reduce(largest, dist.ReduceOp.MAX)

    def gradient_summary(self) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        if not self._has_gradient:
            raise GradientError("the gradient could not be computed: the loss is not finite")
        squares = [float(np.dot(s.grad, s.grad)) if s.primary else 0.0 for s in self._slots]
        nonzero = [float(np.count_nonzero(s.grad)) if s.primary else 0.0 for s in self._slots]
        total = self._reduce(np.array([*squares, *nonzero]))
        count = len(self._slots)
        return total[:count], total[count:].astype(np.int64)

    def element(self, segment: int, local: int) -> tuple[float, float]:
        key = (segment, local)
        if key not in self._elements:
            slot = self._slots[segment]
            pos = slot.position(local)
            mine = np.zeros(2)
            if pos is not None:
                mine = np.array([float(slot.saved_flat[pos]), float(slot.grad[pos])])
            positions = np.array([local, local], dtype=np.intp)
            x, g = self._from_owners(segment, positions, mine)
            self._elements[key] = (float(x), float(g))
        return self._elements[key]

    def gradient_elements(
        self, segment: int, positions: IndexArray, transposed: bool = False
    ) -> FloatArray:
        slot = self._slots[segment]
        if transposed:
            positions = transposed_positions(positions, slot.shape)
        mine = np.zeros(positions.size)
        for k, i in enumerate(positions):
            pos = slot.position(int(i))
            if pos is not None:
                mine[k] = slot.grad[pos]
        return self._from_owners(segment, positions, mine)

    def write_along(self, segment: int, direction: Direction, step: float) -> None:
        """Block by block: ``x + step v`` into the shard; at the ``-step`` write, this rank's
        share of the analytic derivative (``g . v``, or along the values stored when the dtype
        rounds them: ``x + step v`` is recomputed, nothing of the ``+step`` write is kept)."""
        slot = self._slots[segment]
        share = 0.0
        for a, b, where in slot.chunks():
            v = _along(direction, where)
            x = slot.saved64(a, b)
            values = x + step * v
            stored = values if slot.exact else values.astype(slot.np_dtype)
            with torch.no_grad():
                slot.flat[a:b].copy_(torch.from_numpy(stored).to(slot.data.device))
            if step > 0.0 or not slot.primary:
                continue
            if slot.exact:  # stored as computed: g . v, as the engine's whole-vector path
                share += float(np.dot(slot.grad[a:b], v))
            else:  # along the steps actually stored, rounded to the dtype
                plus = (x - step * v).astype(slot.np_dtype).astype(np.float64)
                share += float(np.dot(slot.grad[a:b], plus - stored)) / (-2.0 * step)
        if step < 0.0:
            self._pending[segment] = share  # summed by the next evaluation's agreement

    def gradient_along(self, segment: int, direction: Direction, step: float) -> float:
        if segment not in self._along:
            # No evaluation since the -step writes (not the engine's order): sum them here.
            pending, self._pending = self._pending, {}
            assert segment in pending, "gradient_along needs a write_along(+step), (-step) pair"
            agreed = self._reduce(np.array([*pending.values()]))
            self._along.update((s, float(v)) for s, v in zip(pending, agreed, strict=True))
        return self._along.pop(segment)

    def gradient_dot(self, segment: int, direction: Direction, transposed: bool = False) -> float:
        slot = self._slots[segment]
        share = 0.0
        for a, b, where in slot.chunks() if slot.primary else ():
            if transposed:
                first = np.arange(*where, dtype=np.intp) if isinstance(where, tuple) else where
                where = transposed_positions(first, slot.shape)
            share += float(np.dot(slot.grad[a:b], _along(direction, where)))
        return float(self._reduce(np.array([share]))[0])

    def gradient_dots(self, parts: Sequence[tuple[int, Direction]]) -> FloatArray:
        """Each rank's local dot products, block by block, then one all-reduce for all."""
        shares = np.zeros(len(parts))
        for k, (segment, direction) in enumerate(parts):
            slot = self._slots[segment]
            for a, b, where in slot.chunks() if slot.primary else ():
                shares[k] += float(np.dot(slot.grad[a:b], _along(direction, where)))
        return self._reduce(shares) if parts else shares

    def nonzero_positions(self, segment: int, ranks: IndexArray) -> IndexArray:
        """By bisection over positions: each round, one all-reduce of the counts below."""
        slot = self._slots[segment]
        ranks = np.asarray(ranks, dtype=np.intp)
        mine = np.sort(slot.positions()[slot.grad != 0]) if slot.primary else np.zeros(0)
        lo = np.zeros(ranks.size, dtype=np.intp)
        hi = np.full(ranks.size, slot.size - 1, dtype=np.intp)
        while bool(np.any(lo < hi)):  # the same on every rank: the counts are agreed
            mid = (lo + hi) // 2
            below = self._reduce(np.searchsorted(mine, mid, side="right").astype(np.float64))
            more = below > ranks
            hi = np.where(more, mid, hi)
            lo = np.where(more, lo, mid + 1)
        return lo

    def largest_gradient_outside(self, segment: int, lo: int, hi: int) -> int | None:
        """The position of the largest ``|g|`` outside the block, the first on ties: with no
        gradient outside, that is the first position outside, as the engine's dense rule says."""
        slot = self._slots[segment]
        positions = slot.positions()
        outside = (positions < lo) | (positions > hi)
        best, where = -1.0, float(slot.size)
        if np.any(outside):
            g = np.abs(slot.grad[outside])
            best = float(np.max(g))
            where = float(np.min(positions[outside][g == best]))
        rows = self._gather_rows(np.array([best, where]))
        top = float(np.max(rows[:, 0]))
        if top < 0.0:
            return None
        return int(np.min(rows[rows[:, 0] == top, 1]))

    def element_owners(self, items: Sequence[tuple[int, int]]) -> list[tuple[int, ...]] | None:
        """The ranks whose shards hold each (tensor, flat position) of ``items``."""
        held = np.array(
            [self._slots[s].position(i) is not None for s, i in items], dtype=np.float64
        )
        rows = self._gather_rows(held) if items else np.zeros((self.world, 0))
        return [tuple(int(r) for r in np.flatnonzero(rows[:, k] > 0)) for k in range(len(items))]

    # -- FlatView ------------------------------------------------------------------------------

    def original(self, segment: int) -> FloatArray:
        """The tensor's whole original values, gathered (collective). The engine never asks a
        partitioned view for them (joint screening included: it writes through
        :meth:`write_along`); this serves the contract for other callers."""
        slot = self._slots[segment]
        if not slot.sharded:
            return slot.saved64().copy()
        from torch.distributed.tensor import DTensor

        whole = DTensor.from_local(
            slot.saved,
            slot.mesh,
            slot.placements_of,
            run_check=False,
            shape=slot.param.shape,
            stride=slot.param.stride(),
        ).full_tensor()
        return whole.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()

    def write(self, segment: int, index: IndexArray | None, values: FloatArray) -> FloatArray:
        slot = self._slots[segment]
        stored = values if slot.exact else values.astype(slot.np_dtype)
        with torch.no_grad():
            slot.write(index, stored)
        if index is not None:
            for i in index:
                self._probed[(segment, int(i))] = slot.position(int(i)) is not None
        return values if slot.exact else stored.astype(np.float64)

    def reset(self, segment: int, index: IndexArray | None) -> None:
        with torch.no_grad():
            self._slots[segment].reset(index)

    def write_element(self, segment: int, local: int, value: float) -> float:
        slot = self._slots[segment]
        stored = value if slot.exact else float(slot.np_dtype.type(value))
        pos = slot.position(local)
        self._probed[(segment, local)] = pos is not None
        if pos is not None:
            with torch.no_grad():
                slot.flat[pos] = stored
        return stored

    def reset_element(self, segment: int, local: int) -> None:
        slot = self._slots[segment]
        pos = slot.position(local)
        if pos is not None:
            with torch.no_grad():
                slot.flat[pos] = slot.saved_flat[pos]

    @property
    def loss_dtype(self) -> np.dtype[Any]:
        return self._loss_dtype

    def gradient(self) -> FloatArray:
        """The whole gradient, assembled over ranks (collective; the engine never asks a
        partitioned view for it: it asks for :meth:`gradient_summary` and the reductions)."""
        if not self._has_gradient:
            raise GradientError("the gradient could not be computed: the loss is not finite")
        whole = np.zeros(self.layout.size)
        for segment, slot in zip(self.layout, self._slots, strict=True):
            if slot.primary:
                whole[segment.offset + slot.positions()] = slot.grad
        return self._reduce(whole)

    @property
    def notes(self) -> dict[str, str | int | float | bool | None]:
        """The view's notes, with the owning ranks of the probed elements.

        Collective the first time (one all-gather): the engine reads the notes once, at the end
        of a check, on every rank alike.
        """
        if self._owners is None:
            self._owners = self._owner_note()
        notes = dict(self._notes)
        notes["owners"] = self._owners
        return notes

    def _owner_note(self) -> str:
        probed = sorted(self._probed)[:_MAX_OWNERS]
        mine = [key for key in probed if self._probed[key]]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine, group=self._group)
        owners: dict[tuple[int, int], list[int]] = {}
        for rank, keys in enumerate(gathered):
            for key in keys:
                owners.setdefault(tuple(key), []).append(rank)
        parts = []
        for key in probed:
            segment = self.layout[key[0]]
            where = "[" + ", ".join(str(i) for i in segment.unravel(key[1])) + "]"
            ranks = owners.get(key, [])
            who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ",".join(map(str, ranks))
            parts.append(f"{segment.name}{where}: {who}")
        more = len(self._probed) - len(probed)
        return "; ".join(parts) + (f"; ... ({more} more)" if more > 0 else "")

    def restore(self) -> None:
        """Local shards, buffers, ``.grad`` fields, RNG states and TF32 back, on this rank only."""
        steps: list[Callable[[], None]] = [slot.restore for slot in self._slots]
        steps += [self._buffers.restore, self._grads.restore, self._rng.replay]
        if self._tf32 is not None:
            steps.append(self._tf32.restore)
        with torch.no_grad():
            failure = run_all(steps)
        torch.set_grad_enabled(self._grad_enabled)
        if failure is not None:
            raise failure
