"""Sharded checks: a 2-rank FSDP2 check against the same check unsharded, and float32 verdicts.

Run as ``python benchmarks/bench_sharded.py [--quick] [--seeds N]``. Spawns 2 processes (gloo,
CPU). Prints Markdown:

1. Wall time of one check of an FSDP2-sharded MLP (per-layer and root ``fully_shard``) on 2
   ranks, against the same check (same weights, data and seed) of the unsharded model in one
   process, as a ratio; and the collectives per probe (counted by wrapping the
   ``torch.distributed`` collectives FSDP2 and gradguard call, during the check only).
2. float32 models evaluated in place (a sharded model has no float64 shadow): how many correct
   models fail (false alarms) and how many planted bugs are caught, over seeds, for FSDP2 and
   tensor parallel, next to the unsharded check.
3. Peak memory of one check per rank, 2-rank FSDP2, against the same check unsharded in one
   process (``--memory``: this section only): the peak resident set during the check above the
   resident set before it (``VmHWM`` reset through ``/proc/self/clear_refs``; glibc's mmap
   threshold fixed, so freed buffers go back to the system), and the peak of NumPy's and
   Python's own allocations (``tracemalloc``; torch's are not traced).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import pathlib
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _common import median, ms, timed

import gradguard as gg
from zoo import sharded_models as zoo

WORLD = 2
# FSDP2 (torch 2.13) calls all_gather_single / reduce_scatter_single; gradguard all_gather.
COLLECTIVES = tuple(
    name
    for name in (
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_object",
        "all_gather_single",
        "all_reduce",
        "broadcast",
        "reduce_scatter_single",
        "reduce_scatter_tensor",
    )
    if hasattr(dist, name)
)


def _mlp(width: int, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 8)
    ).to(dtype)


def _fsdp(model: nn.Module, mesh: Any) -> nn.Module:
    for layer in list(model)[::2]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextmanager
def _counting() -> Iterator[Counter[str]]:
    """Count calls of the torch.distributed collectives (FSDP2 and gradguard call them there),
    and of ``DTensor.full_tensor`` (a whole tensor gathered through DTensor's functional
    collectives, which the first count does not see)."""
    counts: Counter[str] = Counter()
    saved = {name: getattr(dist, name) for name in COLLECTIVES}
    full_tensor = DTensor.full_tensor

    def counted(name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return function(*args, **kwargs)

    def gathered(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["full_tensor"] += 1
        return full_tensor(self, *args, **kwargs)

    for name, function in saved.items():
        setattr(dist, name, functools.partial(counted, name, function))
    DTensor.full_tensor = gathered  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        for name, function in saved.items():
            setattr(dist, name, function)
        DTensor.full_tensor = full_tensor  # type: ignore[method-assign]


def _timing(rank: int, width: int, repeats: int) -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (WORLD,))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 64, generator=data), torch.randn(64, 8, generator=data)

    row: dict[str, Any] = {"width": width}
    for dtype in (torch.float32, torch.float64):
        xd, yd = x.to(dtype), y.to(dtype)

        def loss(m: nn.Module, xd: torch.Tensor = xd, yd: torch.Tensor = yd) -> torch.Tensor:
            return F.mse_loss(m(xd), yd)

        sharded = _fsdp(_mlp(width, dtype), mesh)
        unsharded = _mlp(width, dtype)
        gg.check(loss, sharded, seed=0)  # warm-up: the coordination group, DTensor caches
        times_sharded, times_unsharded = [], []
        for seed in range(repeats):
            dist.barrier()
            seconds, report = timed(functools.partial(gg.check, loss, sharded, seed=seed))
            times_sharded.append(seconds)
            seconds, reference = timed(functools.partial(gg.check, loss, unsharded, seed=seed))
            times_unsharded.append(seconds)
        with _counting() as counts:
            report = gg.check(loss, sharded, seed=0)
        name = str(dtype).removeprefix("torch.")
        row[name] = {
            "sharded": median(times_sharded),
            "unsharded": median(times_unsharded),
            "evaluations": report.evaluations,
            "collectives": dict(counts),
            "passed": [report.passed, reference.passed],
            "unsharded_evaluation": reference.notes.get("evaluation"),
        }
    return row


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak(check: Callable[[], gg.CheckReport]) -> tuple[float, float, gg.CheckReport]:
    """(peak RSS above the RSS before, peak traced allocations) of one check, in MiB."""
    gc.collect()
    before = _status_kib("VmRSS")
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    tracemalloc.start()
    report = check()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (_status_kib("VmHWM") - before) / 1024, traced / 2**20, report


def _memory(rank: int, width: int) -> list[dict[str, Any]]:
    """Per rank, one check of the FSDP2 model; on rank 0, the unsharded check (rank 1 waits)."""
    mesh = init_device_mesh("cpu", (WORLD,))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 64, generator=data), torch.randn(64, 8, generator=data)
    rows = []
    for dtype in (torch.float64, torch.float32):
        xd, yd = x.to(dtype), y.to(dtype)

        def loss(m: nn.Module, xd: torch.Tensor = xd, yd: torch.Tensor = yd) -> torch.Tensor:
            return F.mse_loss(m(xd), yd)

        for strategy in ("per-tensor", "screen"):
            check = functools.partial(gg.check, loss, seed=1, strategy=strategy)
            sharded = _fsdp(_mlp(width, dtype), mesh)
            check(sharded)  # warm-up: the coordination group, DTensor caches
            dist.barrier()
            rss, traced, report = _peak(functools.partial(check, sharded))
            del sharded
            dist.barrier()
            row: dict[str, Any] = {
                "dtype": str(dtype).removeprefix("torch."),
                "strategy": strategy,
                "sharded_rss": rss,
                "sharded_traced": traced,
                "evaluations": report.evaluations,
            }
            row["params"] = sum(int(math.prod(p.shape)) for p in report.params)
            if rank == 0:
                unsharded = _mlp(width, dtype)
                check(unsharded)
                rss, traced, reference = _peak(functools.partial(check, unsharded))
                row.update(unsharded_rss=rss, unsharded_traced=traced)
                row["statuses"] = f"{report.status.value} / {reference.status.value}"
            dist.barrier()
            rows.append(row)
    return rows


def _verdicts(rank: int, seeds: int) -> dict[str, Any]:
    """float32, in place: false alarms on correct models, catches of the planted row bug."""
    mesh = init_device_mesh("cpu", (WORLD,))
    shards: dict[str, Callable[[nn.Module], nn.Module]] = {
        "FSDP2": lambda m: _fsdp(m, mesh),
        "tensor parallel": lambda m: parallelize_module(
            m, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()}
        ),
        "unsharded (float64 shadow)": lambda m: m,
    }
    x, y = zoo.data(torch.float32)
    out: dict[str, Any] = {}
    for name, shard in shards.items():
        counts = {"correct_failed": 0, "correct_inconclusive": 0, "buggy_caught": 0}
        for seed in range(seeds):
            report = gg.check(zoo.loss_fn(x, y), shard(zoo.build(None, torch.float32)), seed=seed)
            counts["correct_failed"] += report.status.value == "fail"
            counts["correct_inconclusive"] += report.status.value == "inconclusive"
            buggy = shard(zoo.build("2", torch.float32))
            report = gg.check(zoo.loss_fn(x, y), buggy, seed=seed)
            counts["buggy_caught"] += report.failed == ("2.weight",)
        out[name] = counts
    return out


def _worker(rank: int, out_dir: str, quick: bool, seeds: int, memory: int) -> None:
    out = pathlib.Path(out_dir)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=WORLD
    )
    try:
        widths = (64,) if quick else (64, 256)
        if memory:
            result: dict[str, Any] = {"memory": _memory(rank, memory)}
        else:
            result = {
                "timing": [_timing(rank, w, 1 if quick else 3) for w in widths],
                "verdicts": _verdicts(rank, seeds),
            }
    finally:
        dist.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one width, one repeat")
    parser.add_argument("--seeds", type=int, default=20, help="seeds for the float32 verdicts")
    parser.add_argument(
        "--memory", type=int, default=0, metavar="WIDTH", help="only the memory section, MLP width"
    )
    args = parser.parse_args()
    # A fixed mmap threshold: freed large buffers return to the system, so a check's peak is
    # measured from the resident set before it (glibc otherwise keeps them after the warm-up).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(tmp, args.quick, args.seeds, args.memory), nprocs=WORLD)
        result = json.loads((pathlib.Path(tmp) / "rank0.json").read_text())
        other = json.loads((pathlib.Path(tmp) / "rank1.json").read_text())
    if args.memory:
        _print_memory(result["memory"], other["memory"], args.memory)
        return

    print(f"## Sharded checks: FSDP2 on {WORLD} ranks (gloo, CPU) vs unsharded in one process\n")
    print(
        "| MLP 64-w-w-8 | dtype | unsharded (ms) | sharded, 2 ranks (ms) | ratio "
        "| evaluations | collectives per probe (2 evaluations) |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for row in result["timing"]:
        for dtype in ("float32", "float64"):
            cell = row[dtype]
            probes = cell["evaluations"] / 2
            per_probe = ", ".join(
                f"{name} {count / probes:.1f}"
                for name, count in sorted(cell["collectives"].items())
            )
            print(
                f"| w={row['width']} | {dtype} | {ms(cell['unsharded'])} | {ms(cell['sharded'])} "
                f"| {cell['sharded'] / cell['unsharded']:.1f}x | {cell['evaluations']} "
                f"| {per_probe} |"
            )
    print(
        "\nThe unsharded float32 check runs in a float64 shadow copy "
        f"({result['timing'][0]['float32']['unsharded_evaluation']}); the sharded one in place.\n"
    )
    print(f"## float32 verdicts over {args.seeds} seeds (planted bug: one row of 2.weight x2)\n")
    print("| model | correct: failed | correct: inconclusive | buggy: caught, exactly 2.weight |")
    print("|---|---:|---:|---:|")
    for name, counts in result["verdicts"].items():
        print(
            f"| {name} | {counts['correct_failed']} | {counts['correct_inconclusive']} "
            f"| {counts['buggy_caught']} / {args.seeds} |"
        )


def _print_memory(rows: list[dict[str, Any]], other: list[dict[str, Any]], width: int) -> None:
    params = rows[0]["params"]
    print(
        f"## Peak memory of one check: FSDP2 on {WORLD} ranks vs unsharded in one process\n\n"
        f"MLP 64-{width}-{width}-8 ({params / 1e6:.2f} M parameters), batch 64; MiB above the "
        "resident set before the check (RSS) and NumPy/Python allocations (traced).\n"
    )
    print(
        "| dtype | strategy | unsharded RSS | sharded RSS, rank 0 / 1 | ratio | unsharded traced "
        "| sharded traced, rank 0 / 1 | ratio | status sharded / unsharded |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row, peer in zip(rows, other, strict=True):
        rss = max(row["sharded_rss"], peer["sharded_rss"])
        traced = max(row["sharded_traced"], peer["sharded_traced"])
        print(
            f"| {row['dtype']} | {row['strategy']} | {row['unsharded_rss']:.1f} "
            f"| {row['sharded_rss']:.1f} / {peer['sharded_rss']:.1f} "
            f"| {rss / row['unsharded_rss']:.2f} | {row['unsharded_traced']:.1f} "
            f"| {row['sharded_traced']:.1f} / {peer['sharded_traced']:.1f} "
            f"| {traced / row['unsharded_traced']:.2f} | {row['statuses']} |"
        )


if __name__ == "__main__":
    main()
