"""A tiny least-squares model with a hand-written gradient, shared by the log and report tests."""

from __future__ import annotations

from typing import Any

import numpy as np

X = np.random.default_rng(0).normal(size=(8, 3))
Y = np.random.default_rng(1).normal(size=(8, 2))

Params = dict[str, Any]


def loss(p: Params) -> float:
    r = X @ p["W"] + p["b"] - Y
    return 0.5 * float(np.sum(r * r))


def grad(p: Params) -> Params:
    r = X @ p["W"] + p["b"] - Y
    return {"W": X.T @ r, "b": r.sum(axis=0)}


def grad_with_doubled_b(p: Params) -> Params:
    g = grad(p)
    return {"W": g["W"], "b": 2.0 * g["b"]}
