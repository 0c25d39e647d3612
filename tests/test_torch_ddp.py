"""A Guard in a real 2-process DistributedDataParallel run (gloo, CPU, torch.multiprocessing).

Each process trains the same small model three times in one process group: with a default
guard (checks on rank 0 only), with ``ranks="all"``, and without a guard. The test pins that
nothing hangs (a deadline), that the checks never go through the DDP wrapper (so its gradient
reducer is never engaged: a forward pre-hook on the wrapper counts only the training steps),
that only the selected ranks check, and that the trained weights are bit-identical across
ranks and to training without a guard.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gloo_group import join_gloo  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import gradguard as gg  # noqa: E402

WORLD = 2
STEPS = 6
DEADLINE_S = 120


def _train(rank: int, out: pathlib.Path, tag: str, ranks: Any | None) -> dict[str, Any]:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    ddp = DistributedDataParallel(model)
    wrapper_calls = [0]

    def count(*_: Any) -> None:
        wrapper_calls[0] += 1

    ddp.register_forward_pre_hook(count)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    x, y = torch.randn(32, 6, generator=data), torch.randn(32, 1, generator=data)
    guard = None
    if ranks is not None:
        guard = gg.Guard(
            lambda m: F.mse_loss(m(x[:8]), y[:8]),
            ddp,
            every=2,
            max_checks=None,
            ranks=ranks,
            log_file=str(out / f"{tag}-rank{rank}.jsonl"),
            seed=1,
        )
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.mse_loss(ddp(x), y).backward()
        optimizer.step()
        if guard is not None:
            guard.step()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(weights, out / f"{tag}-rank{rank}.pt")
    return {
        "checks": 0 if guard is None else len(guard.reports),
        "passed": [] if guard is None else [r.passed for r in guard.reports],
        "active": None if guard is None else guard.active,
        "wrapper_calls": wrapper_calls[0],
    }


def _worker(rank: int, out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    join_gloo(rank, WORLD, out, DEADLINE_S)
    try:
        results = {
            "default": _train(rank, out, "default", (0,)),
            "all": _train(rank, out, "all", "all"),
            "none": _train(rank, out, "none", None),
        }
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (out / f"result-rank{rank}.json").write_text(json.dumps(results))


def test_guard_in_ddp_checks_rank_zero_only_and_never_touches_the_reducer(
    tmp_path: pathlib.Path,
) -> None:
    """2-process DDP: rank 0 checks, rank 1 is undisturbed, nothing hangs, weights identical."""
    context = mp.start_processes(
        _worker, args=(str(tmp_path),), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP run did not finish in {DEADLINE_S} s (a hang?)")
    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in range(WORLD)]

    # Default: rank 0 checks at steps 0, 2, 4 (all pass); rank 1 goes quiet at its first step.
    assert results[0]["default"]["checks"] == 3 and all(results[0]["default"]["passed"])
    assert results[1]["default"]["checks"] == 0 and results[1]["default"]["active"] is False
    assert not (tmp_path / "default-rank1.jsonl").exists()
    # ranks="all": every rank checks its own probe batch.
    assert [results[r]["all"]["checks"] for r in range(WORLD)] == [3, 3]
    # The checks never went through the DDP wrapper: it saw only the training steps.
    for r in range(WORLD):
        assert {results[r][tag]["wrapper_calls"] for tag in ("default", "all", "none")} == {STEPS}
    # DDP kept the ranks in sync, and checks left training bit-identical.
    reference = torch.load(tmp_path / "none-rank0.pt")
    for tag in ("default", "all", "none"):
        for r in range(WORLD):
            weights = torch.load(tmp_path / f"{tag}-rank{r}.pt")
            for name, value in reference.items():
                assert torch.equal(weights[name], value), (tag, r, name)
