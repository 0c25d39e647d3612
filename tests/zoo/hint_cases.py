"""Labelled bugs for measuring hint accuracy, beside the zoo's own (numpy_models._BUGS).

Each case is a hand-written NumPy backprop with one kind of mistake; the label is the cause a
hint should name. ``CAUSES`` maps a hint's wording to the causes it names, so that a script can
score a hint as right (names the label), wrong (names another cause) or silent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]

# The causes a hint names, by a phrase of its wording (gradguard/engine/hints.py).
CAUSES: tuple[tuple[str, frozenset[str]], ...] = (
    ("x numeric on every probe", frozenset({"wrong_factor"})),
    ("the sign is wrong", frozenset({"wrong_sign"})),
    ("swapped", frozenset({"swapped"})),
    ("transposed", frozenset({"transposed"})),
    ("confined", frozenset({"one_row"})),
    ("analytic gradient is ~0", frozenset({"missing_term", "detached"})),
    ("does not depend on this tensor", frozenset({"wrong_tensor"})),
    ("missing or extra term", frozenset({"missing_term", "activation", "detached"})),
    ("modifies its parameters", frozenset({"mutation"})),
)

# The zoo's bug kinds, as causes.
ZOO_LABELS = {
    "wrong_factor": "wrong_factor",
    "scale_0.1pct": "wrong_factor",
    "wrong_sign": "wrong_sign",
    "missing_term": "missing_term",
    "one_row": "one_row",
}


def named_causes(hint: str) -> frozenset[str]:
    """The causes a hint names (empty when it names none)."""
    named: set[str] = set()
    for phrase, causes in CAUSES:
        if phrase in hint:
            named |= causes
    return frozenset(named)


@dataclasses.dataclass(frozen=True)
class HintCase:
    name: str
    params: Params
    loss: Callable[[Params], float]
    grad: Callable[[Params], Params]
    label: str
    corrupted: frozenset[str]


def _square_net(dtype: np.dtype, seed: int = 0) -> tuple[Params, Callable, Callable]:
    """x -> tanh(x W1 + b1) -> W2 -> squared error; W1 and W2 are both 6x6."""
    rng = np.random.default_rng(100 + seed)
    x = rng.standard_normal((16, 6)).astype(dtype)
    t = rng.standard_normal((16, 6)).astype(dtype)
    params = {
        "W1": (rng.standard_normal((6, 6)) * 0.5).astype(dtype),
        "b1": (rng.standard_normal(6) * 0.1).astype(dtype),
        "W2": (rng.standard_normal((6, 6)) * 0.5).astype(dtype),
    }

    def forward(p: Params) -> tuple[float, np.ndarray, np.ndarray]:
        h = np.tanh(x @ p["W1"] + p["b1"])
        out = h @ p["W2"]
        return float(0.5 * np.sum((out - t) ** 2) / x.shape[0]), h, out

    def grad(p: Params, activation: bool = False) -> Params:
        _, h, out = forward(p)
        d_out = (out - t) / x.shape[0]
        d_h = d_out @ p["W2"].T
        d_z = d_h * ((1.0 - h) if activation else (1.0 - h**2))
        return {"W1": x.T @ d_z, "b1": d_z.sum(axis=0), "W2": h.T @ d_out}

    return params, (lambda p: forward(p)[0]), grad


def _tied_net(dtype: np.dtype, seed: int = 0) -> tuple[Params, Callable, Callable]:
    """One matrix used twice (weight tying): tanh(tanh(x W) W)."""
    rng = np.random.default_rng(200 + seed)
    x = rng.standard_normal((12, 5)).astype(dtype)
    t = rng.standard_normal((12, 5)).astype(dtype)
    params = {
        "W": (rng.standard_normal((5, 5)) * 0.6).astype(dtype),
        "b": (rng.standard_normal(5) * 0.1).astype(dtype),
    }

    def forward(p: Params) -> tuple[float, np.ndarray, np.ndarray]:
        h1 = np.tanh(x @ p["W"])
        h2 = np.tanh(h1 @ p["W"] + p["b"])
        return float(0.5 * np.sum((h2 - t) ** 2) / x.shape[0]), h1, h2

    def grad(p: Params, detach_first_use: bool = False) -> Params:
        _, h1, h2 = forward(p)
        d_z2 = (h2 - t) / x.shape[0] * (1.0 - h2**2)
        d_w = h1.T @ d_z2
        if not detach_first_use:
            d_z1 = (d_z2 @ p["W"].T) * (1.0 - h1**2)
            d_w = d_w + x.T @ d_z1
        return {"W": d_w, "b": d_z2.sum(axis=0)}

    return params, (lambda p: forward(p)[0]), grad


def hint_cases(dtype: np.dtype | type = np.float64, seed: int = 0) -> list[HintCase]:
    """The labelled bugs the zoo does not have: activation, transposed, swapped, detached,
    a loss that modifies its parameters."""
    dt = np.dtype(dtype)
    cases = []

    params, loss, grad = _square_net(dt, seed)
    cases.append(
        HintCase(
            "square/activation",
            params,
            loss,
            lambda p, grad=grad: grad(p, activation=True),
            "activation",
            frozenset({"W1", "b1"}),
        )
    )

    params, loss, grad = _square_net(dt, seed)

    def transposed(p: Params, grad: Callable = grad) -> Params:
        g = grad(p)
        return {**g, "W2": g["W2"].T.copy()}

    cases.append(
        HintCase("square/transposed", params, loss, transposed, "transposed", frozenset({"W2"}))
    )

    params, loss, grad = _square_net(dt, seed)

    def swapped(p: Params, grad: Callable = grad) -> Params:
        g = grad(p)
        return {**g, "W1": g["W2"], "W2": g["W1"]}

    cases.append(
        HintCase("square/swapped", params, loss, swapped, "swapped", frozenset({"W1", "W2"}))
    )

    params, loss, grad = _square_net(dt, seed)

    def decaying(p: Params, loss: Callable = loss) -> float:
        p["W2"] *= 0.999  # weight decay applied inside the loss
        return loss(p)

    cases.append(
        HintCase("square/decay_in_loss", params, decaying, grad, "mutation", frozenset({"W2"}))
    )

    params, loss, grad = _square_net(dt, seed)

    def renormalizing(p: Params, loss: Callable = loss) -> float:
        p["W1"] /= 2.0 * np.sqrt(np.sum(p["W1"] ** 2))  # in-place weight normalization: the
        return loss(p)  # first call moves W1, later calls keep it (the loss repeats)

    cases.append(
        HintCase(
            "square/renormalize_in_loss", params, renormalizing, grad, "mutation", frozenset({"W1"})
        )
    )

    params, loss, grad = _tied_net(dt, seed)
    cases.append(
        HintCase(
            "tied/detached",
            params,
            loss,
            lambda p, grad=grad: grad(p, detach_first_use=True),
            "detached",
            frozenset({"W"}),
        )
    )
    return cases
