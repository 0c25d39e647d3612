"""The engine: central differences on flat float64 vectors, judged per tensor.

Pure NumPy; no framework, no files, no logging, no front-door state. :mod:`.check` runs a
check on an adapter's :class:`~gradguard.kit.FlatView`; :mod:`.screen` screens every tensor
jointly and group-tests over tensors; :mod:`.numerics` holds the numerical policy (steps,
tolerances, the seed's relative difference); :mod:`.sampling` draws coordinates and
directions from a private generator; :mod:`.layout` names the slices of the flat vector.
"""

from __future__ import annotations

from gradguard.engine.check import (
    DEFAULT_COORDINATES,
    DEFAULT_DIRECTIONS,
    DEFAULT_STRATEGY,
    STRATEGIES,
    Settings,
    run_check,
)
from gradguard.engine.layout import Layout, Segment

__all__ = [
    "DEFAULT_COORDINATES",
    "DEFAULT_DIRECTIONS",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Layout",
    "Segment",
    "Settings",
    "run_check",
]
