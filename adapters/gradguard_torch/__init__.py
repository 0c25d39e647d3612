"""gradguard's PyTorch adapter plugin.

Claims ``torch.nn.Module`` objects (their parameters that require grad; DataParallel and
DistributedDataParallel are unwrapped), tensors and Parameters, and dicts, lists and tuples
of tensors. The analytic gradient comes from autograd, so ``grad`` is optional::

    report = gradguard.check(lambda m: F.mse_loss(m(x), y), model)

A float32 model is evaluated in a float64 shadow copy; see ``docs/pytorch.md``.

It also answers ``gradguard_distributed_rank`` for torch params (the rank in the default
``torch.distributed`` process group, when one is initialized), so that a training-loop guard
checks on rank 0 only; and ``gradguard_collective_seed`` for a module whose parameters are
DTensors (FSDP2, tensor parallel): such a model is checked collectively, on every rank, with
rank 0's seed (``gradguard_torch._sharded``, ``docs/distributed.md``).

``gradguard_torch.gradcheck`` and ``gradgradcheck`` are drop-ins for torch's operator checks
that work in float32 (:mod:`gradguard_torch.operators`, ``docs/migrating-from-gradcheck.md``).

Importing this module does not import torch: a user who holds a torch object has torch in
``sys.modules`` already, and the claim hook looks there first (the einops pattern). The
adapter itself (``gradguard_torch._adapter``, which imports torch) is loaded on the first
claim. The hook is ``trylast``, so another plugin can claim these containers first.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from gradguard import hookimpl
from gradguard.kit.tree import holds_any

if TYPE_CHECKING:
    from gradguard_torch._adapter import TorchAdapter, TorchView
    from gradguard_torch._sharded import ShardedLossError
    from gradguard_torch.operators import OperatorCheckError, gradcheck, gradgradcheck

__all__ = [
    "OperatorCheckError",
    "ShardedLossError",
    "TorchAdapter",
    "TorchView",
    "gradcheck",
    "gradgradcheck",
    "gradguard_adapter_claim",
    "gradguard_collective_seed",
    "gradguard_distributed_rank",
    "holds_torch",
]

_ADAPTER: TorchAdapter | None = None
# type -> whether it is a torch tensor or module, so a repeated claim costs a dict lookup.
_KINDS: dict[type, bool] = {}


def _is_torch_leaf(obj: object, torch: Any) -> bool:
    kind = _KINDS.get(type(obj))
    if kind is None:
        kind = isinstance(obj, torch.Tensor | torch.nn.Module)
        _KINDS[type(obj)] = kind
    return kind


def holds_torch(params: object) -> bool:
    """Whether ``params`` is, or a dict/list/tuple holds, a torch tensor or module.

    Never imports torch: without ``torch`` in ``sys.modules`` nothing can be a torch object.
    """
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "nn"):  # absent, or still being imported
        return False
    return holds_any(params, lambda leaf: _is_torch_leaf(leaf, torch))


def __getattr__(name: str) -> Any:
    """The adapter, the sharded error and the operator checks load on first use (torch)."""
    if name in ("TorchAdapter", "TorchView"):
        from gradguard_torch import _adapter

        return getattr(_adapter, name)
    if name in ("gradcheck", "gradgradcheck", "OperatorCheckError"):
        from gradguard_torch import operators

        return getattr(operators, name)
    if name == "ShardedLossError":
        from gradguard_torch import _sharded

        return _sharded.ShardedLossError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl(trylast=True)
def gradguard_adapter_claim(params: object) -> TorchAdapter | None:
    """Claim modules, tensors, and containers holding torch tensors.

    A container that mixes torch tensors with other leaves is claimed too, so that the
    adapter can say which leaf it cannot check rather than no adapter answering at all.
    """
    global _ADAPTER
    if not holds_torch(params):
        return None
    if _ADAPTER is None:
        from gradguard_torch._adapter import TorchAdapter  # torch is already imported

        _ADAPTER = TorchAdapter()
    return _ADAPTER


@hookimpl(trylast=True)
def gradguard_distributed_rank(params: object) -> int | None:
    """This process's rank in the default torch.distributed group, when one is initialized.

    ``None`` (not distributed) for params that hold no torch object, or when no process group
    is initialized.
    """
    if not holds_torch(params):
        return None
    distributed = getattr(sys.modules["torch"], "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return None
    return int(distributed.get_rank())


@hookimpl(trylast=True)
def gradguard_collective_seed(params: object, seed: int) -> int | None:
    """Rank 0's seed, broadcast, for a module with DTensor parameters; else ``None``.

    Collective for such a module (every rank must call it); never imports torch.distributed
    otherwise: a model holding DTensors has imported ``torch.distributed.tensor`` already.
    """
    if "torch.distributed.tensor" not in sys.modules or not holds_torch(params):
        return None
    from gradguard_torch._sharded import agree_seed

    return agree_seed(params, seed)
