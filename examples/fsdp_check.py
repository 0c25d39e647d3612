"""A sharded model (FSDP2 on 2 processes) with a buggy hand-written layer, caught on every rank.

The middle layer of a small MLP is a custom ``torch.autograd.Function`` whose backward
averages the bias gradient over the batch instead of summing it: a classic slip that training
survives (it only slows one tensor down). The model is sharded with ``fully_shard`` per layer
and at the root, so no process holds a whole weight. ``gradguard.check`` is called on every
rank, like a training step; each rank perturbs only the elements its shards hold, the loss is
evaluated collectively, and every rank gets the same report::

    python examples/fsdp_check.py

Runs on CPU with gloo (two processes, ~10 s).
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import gradguard as gg

WORLD = 2


class BiasMeanLinear(torch.autograd.Function):
    """``y = x W^T + b`` with a bug: the bias gradient is the batch *mean* of ``g``, not its sum."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> Any:
        ctx.save_for_backward(x, weight)
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, weight = ctx.saved_tensors
        return g @ weight, g.T @ x, g.mean(0)  # BUG: should be g.sum(0)


class HandWrittenLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BiasMeanLinear.apply(x, self.weight, self.bias)  # type: ignore[no-any-return]


def build() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), HandWrittenLinear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )


def worker(rank: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        model = build()
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        data = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 8, generator=data), torch.randn(32, 4, generator=data)

        # Called on every rank: each evaluation is a collective forward.
        report = gg.check(lambda m: F.mse_loss(m(x), y), model)

        record = report.to_dict()
        record.pop("duration_s")
        reports: list[Any] = [None] * WORLD
        dist.all_gather_object(reports, json.dumps(record, sort_keys=True))
        if rank == 0:
            print(report)
            print()
            print(
                f"checked on {WORLD} ranks; the same report on every rank: {len(set(reports)) == 1}"
            )
            print(f"wrong tensors: {', '.join(report.failed) or 'none'}")
        dist.barrier()  # leave together: gloo's teardown can abort a rank whose peer left
    finally:
        dist.destroy_process_group()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(str(pathlib.Path(tmp) / "rendezvous"),), nprocs=WORLD)


if __name__ == "__main__":
    main()
