"""The adapter kit: what every framework adapter needs and nobody should write twice.

Framework-free. :mod:`.contract` is the :class:`FlatView` / :class:`Adapter` contract between
the engine and an adapter; :mod:`.buffered` is a flat view for frameworks with immutable
arrays; :mod:`.tree` walks nested params containers and names their leaves.
An adapter is the framework-specific remainder: detecting its objects, reading and writing
values, evaluating the loss, autodiff.
"""

from __future__ import annotations

from gradguard.kit.buffered import BufferedView, Perturbation
from gradguard.kit.contract import Adapter, FlatView, IndexArray, scalar_loss_value

__all__ = [
    "Adapter",
    "BufferedView",
    "FlatView",
    "IndexArray",
    "Perturbation",
    "scalar_loss_value",
]
