"""Forward mode: the per-tensor probes of :mod:`.check`, the analytic side from JVPs.

``check(loss, params, mode="forward")`` runs the same check as the default: coordinates and
random directions per tensor, first and second looks, kinks, localization by bisection. Only
the analytic value of each probe differs: instead of ``g . d`` (the reverse-mode gradient
dotted with the probe's direction), the view's :meth:`~gradguard.kit.contract.FlatView.jvp`
computes the loss's forward-mode derivative along ``d`` (``torch.autograd.forward_ad``,
``jax.jvp``). A custom JVP rule (a ``torch.autograd.Function.jvp``, a ``jax.custom_jvp``) is
then what gets judged, one probe at a time.

The reverse-mode gradient is still read once: it sets the model's gradient scale (the
verdict's zero status) and where sparse coordinates are drawn, nothing else. A JVP costs about
one forward evaluation; measured 1-8x a reverse check in PyTorch (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from gradguard.engine.check import Settings, _Difference, _Run
from gradguard.engine.directions import Direction

__all__ = ["ForwardRun"]

FloatArray = npt.NDArray[np.float64]

if TYPE_CHECKING:
    # The contract lives in the adapter kit, one layer up; the engine only uses its methods.
    from gradguard.kit.contract import FlatView


class ForwardRun(_Run):
    """A check's state whose probes take their analytic side from the view's JVPs."""

    def __init__(self, view: FlatView, settings: Settings, seed: int) -> None:
        super().__init__(view, settings, seed)
        self.jvp_calls = 0
        self._tangent = np.zeros(view.layout.size)

    def _jvp(self, s: int, local: npt.NDArray[np.intp] | None, values: FloatArray) -> float:
        """The JVP along ``values`` placed on tensor ``s`` (at ``local``, or the whole tensor)."""
        segment = self.layout[s]
        tangent = self._tangent
        block = tangent[segment.offset : segment.stop]
        if local is None:
            block[...] = values
        else:
            block[local] = values
        try:
            self.jvp_calls += 1
            return float(self.view.jvp(tangent))
        finally:
            block[...] = 0.0

    def coordinate(self, s: int, local: int, scale: float = 1.0) -> _Difference:
        d = super().coordinate(s, local, scale)
        analytic = self._jvp(s, np.array([local], dtype=np.intp), np.ones(1))
        return d._replace(analytic=analytic)

    def direction(self, s: int, v: Direction, scale: float = 1.0) -> _Difference:
        d = super().direction(s, v, scale)
        return d._replace(analytic=self._jvp(s, None, v.values()))
