"""The NumPy adapter through the conformance suite (gradguard.testing)."""

from __future__ import annotations

from typing import Any

import numpy as np
import toy

from gradguard.testing import AdapterConformance, ConformanceCase


def _make() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}


def _with_b(p: dict[str, Any], b: Any) -> dict[str, Any]:
    return {**toy.grad(p), "b": b}


def _shared() -> list[Any]:
    w = np.ones(3)
    return [w, w]


class TestNumpyConformance(AdapterConformance):
    case = ConformanceCase(
        adapter="numpy",
        make=_make,
        loss=toy.loss,
        grad=toy.grad,
        wrong_grad=toy.grad_with_doubled_b,
        wrong_tensor="b",
        snapshot=lambda p: [p["W"].copy(), p["b"].copy(), np.random.get_state()[1].copy()],
        vector_loss=lambda p: toy.X @ p["W"] + p["b"],
        misshapen_grad=lambda p: _with_b(p, np.zeros(5)),
        nan_grad=lambda p: _with_b(p, np.full(2, np.nan)),
        shared=_shared,
    )
