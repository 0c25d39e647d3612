"""A TF32 round trip in a fresh process, for tests/test_torch_adapter.py (a module of its own
so that a forkserver child can import it without the test module)."""

from __future__ import annotations

import sys


def round_trip(setup: str) -> None:
    """Set TF32 up with ``setup``, switch it off and back; exit 0 if the state round-trips."""
    import torch

    from gradguard_torch import _tf32

    exec(setup, {"torch": torch})
    before = _tf32.tf32_snapshot()
    switch = _tf32.Tf32Switch.off()
    during = _tf32.tf32_snapshot()
    off = all(during.get(k) in ("ieee", "none") for k in ("cuda.matmul", "cudnn.conv"))
    off = off and during.get("legacy.matmul") in (False, "unreadable")
    switch.restore()
    sys.exit(0 if off and _tf32.tf32_snapshot() == before else 2)
