"""The private PyTorch APIs the adapter uses, in one place, each pinned by a test.

``tests/test_torch_sharded.py::test_private_apis_still_exist`` fails loudly when an upgrade
moves one of them.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["default_store"]


def default_store() -> Any:
    """The key-value store of the default process group (the one ``init_process_group`` set up).

    A sharded check writes a failing rank's message there, so that a rank blocked in a
    collective of the model when the failure happened can still name the rank that failed
    once its own collective gives up. ``torch.distributed`` has no public accessor.
    """
    return dist.distributed_c10d._get_default_store()
