"""Joining a real gloo process group from a spawned test worker (no mocks of torch.distributed).

Every multi-process test joins the same way: one thread per rank (two cores shared by every
rank), a file rendezvous in the test's own directory, and a process-group timeout so that a
rank blocked in a collective gives up instead of hanging (Python's signal handlers do not run
while a rank waits inside gloo).
"""

from __future__ import annotations

import datetime
import pathlib

import torch
import torch.distributed as dist


def join_gloo(rank: int, world: int, out: pathlib.Path, timeout_s: float) -> None:
    """Initialize the default gloo group for ``rank`` of ``world``, rendezvous under ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'rendezvous'}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
