"""The seed documents' gradient check, with gradguard.

The seed recipe checks a hand-written backprop of a 3-layer network (LINEAR->RELU->LINEAR->
RELU->LINEAR->SIGMOID) whose backward pass has two planted mistakes (dW2 doubled, db1 four
times too large). It prints one number and "wrong". gradguard prints the same number in seed
mode, and says *which* tensors are wrong and how; its default mode gets there with fewer loss
evaluations, and a correct backprop passes.

Run it with ``make demo`` or ``python examples/seed_example.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import gradguard as gg


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, z)


def make_problem() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The seed's test case: 4 features, 3 examples, layers of 5, 3 and 1 units."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    y = np.array([[1.0, 1.0, 0.0]])
    params = {
        "W1": rng.standard_normal((5, 4)),
        "b1": rng.standard_normal((5, 1)),
        "W2": rng.standard_normal((3, 5)),
        "b2": rng.standard_normal((3, 1)),
        "W3": rng.standard_normal((1, 3)),
        "b3": rng.standard_normal((1, 1)),
    }
    return x, y, params


def forward(x: np.ndarray, y: np.ndarray, p: dict[str, np.ndarray]) -> tuple[float, tuple]:
    z1 = p["W1"] @ x + p["b1"]
    a1 = relu(z1)
    z2 = p["W2"] @ a1 + p["b2"]
    a2 = relu(z2)
    z3 = p["W3"] @ a2 + p["b3"]
    a3 = sigmoid(z3)
    m = x.shape[1]
    cost = -np.sum(y * np.log(a3) + (1 - y) * np.log(1 - a3)) / m
    return float(cost), (z1, a1, z2, a2, z3, a3)


def backward(
    x: np.ndarray, y: np.ndarray, p: dict[str, np.ndarray], buggy: bool
) -> dict[str, np.ndarray]:
    _, (_z1, a1, _z2, a2, _z3, a3) = forward(x, y, p)
    m = x.shape[1]
    dz3 = a3 - y
    dw3 = dz3 @ a2.T / m
    db3 = np.sum(dz3, axis=1, keepdims=True) / m
    da2 = p["W3"].T @ dz3
    dz2 = da2 * (a2 > 0)
    dw2 = dz2 @ a1.T / m * (2 if buggy else 1)  # the seed's first planted mistake
    db2 = np.sum(dz2, axis=1, keepdims=True) / m
    da1 = p["W2"].T @ dz2
    dz1 = da1 * (a1 > 0)
    dw1 = dz1 @ x.T / m
    db1 = (4.0 if buggy else 1.0) / m * np.sum(dz1, axis=1, keepdims=True)  # the second one
    return {"W1": dw1, "b1": db1, "W2": dw2, "b2": db2, "W3": dw3, "b3": db3}


def seed_recipe(
    loss: Callable[[dict[str, np.ndarray]], float],
    grad: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    p: dict[str, np.ndarray],
    eps: float,
) -> float:
    """The seed documents' loop, verbatim in spirit: copy the vector, nudge one entry."""
    keys = list(p)
    theta = np.concatenate([p[k].reshape(-1) for k in keys])
    analytic = np.concatenate([grad(p)[k].reshape(-1) for k in keys])

    def unflatten(vector: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for k in keys:
            out[k] = vector[offset : offset + p[k].size].reshape(p[k].shape)
            offset += p[k].size
        return out

    gradapprox = np.zeros_like(theta)
    for i in range(theta.size):
        plus = np.copy(theta)
        plus[i] += eps
        minus = np.copy(theta)
        minus[i] -= eps
        gradapprox[i] = (loss(unflatten(plus)) - loss(unflatten(minus))) / (2 * eps)
    numerator = np.linalg.norm(analytic - gradapprox)
    denominator = np.linalg.norm(analytic) + np.linalg.norm(gradapprox)
    return float(numerator / denominator)


def main() -> None:
    x, y, params = make_problem()

    def loss(p: dict[str, np.ndarray]) -> float:
        return forward(x, y, p)[0]

    def buggy_grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return backward(x, y, p, buggy=True)

    def correct_grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return backward(x, y, p, buggy=False)

    print("1. The seed recipe on the buggy backprop (every coordinate, eps=1e-7):")
    recipe = seed_recipe(loss, buggy_grad, params, 1e-7)
    print(f"   difference = {recipe:.12g}  -> 'wrong', but where?\n")

    print("2. gradguard in seed mode: the same number, and the tensors that are wrong.")
    report = gg.check(
        loss, params, buggy_grad, eps=1e-7, tolerance=1e-7, sample="all", directions=0, seed=0
    )
    print(report, "\n")

    print("3. gradguard's default check on the same buggy backprop:")
    report = gg.check(loss, params, buggy_grad, seed=0)
    print(report, "\n")

    print("4. The fixed backprop passes:")
    report = gg.check(loss, params, correct_grad, seed=0)
    print(report)
    report.raise_for_failure()


if __name__ == "__main__":
    main()
