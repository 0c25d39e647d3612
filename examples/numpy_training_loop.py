"""A NumPy model trained by hand, with a gradguard.Guard in the loop.

A two-layer tanh network learns a smooth function by plain SGD with a hand-written backprop.
One line in the loop, ``guard.step()``, checks the backprop against central differences every
50 steps on a fixed probe batch, logs each check to a JSON-lines file, and switches the guard
off after three passing checks: the rest of training pays one attribute test per step.
Training with the guard is bit-identical to training without it; the script shows that too.

Run: ``python examples/numpy_training_loop.py [--log PATH] [--steps N]``, then
``gradguard report PATH``.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

import gradguard as gg


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-2.0, 2.0, size=(n, 3))
    y = np.sin(x[:, :1]) * np.cos(x[:, 1:2]) + 0.3 * x[:, 2:3] ** 2
    return x, y


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W1": rng.standard_normal((3, 32)) * 0.5,
        "b1": np.zeros(32),
        "W2": rng.standard_normal((32, 1)) * 0.2,
        "b2": np.zeros(1),
    }


def loss_and_grad(
    p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean squared error of a tanh MLP, and its hand-written backprop."""
    h = np.tanh(x @ p["W1"] + p["b1"])
    out = h @ p["W2"] + p["b2"]
    residual = out - y
    loss = float(np.mean(residual**2))
    d_out = 2.0 * residual / residual.size
    d_h = d_out @ p["W2"].T * (1.0 - h**2)
    grads = {
        "W1": x.T @ d_h,
        "b1": d_h.sum(axis=0),
        "W2": h.T @ d_out,
        "b2": d_out.sum(axis=0),
    }
    return loss, grads


def train(steps: int, log_file: str | None) -> tuple[dict[str, np.ndarray], gg.Guard | None]:
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(rng, 512)
    x_probe, y_probe = make_data(np.random.default_rng(1), 16)  # a fixed probe batch
    params = init_params(rng)
    guard = None
    if log_file is not None:
        guard = gg.Guard(
            lambda p: loss_and_grad(p, x_probe, y_probe)[0],
            params,
            lambda p: loss_and_grad(p, x_probe, y_probe)[1],
            every=50,
            max_checks=3,
            log_file=log_file,
            run_id="numpy-loop",
            seed=7,
        )
    for step in range(steps):
        batch = rng.choice(len(x_train), size=32, replace=False)
        loss, grads = loss_and_grad(params, x_train[batch], y_train[batch])
        for name, g in grads.items():
            params[name] -= 0.1 * g  # in place: the guard holds the same arrays
        if guard is not None:
            report = guard.step()
            if report is not None:
                print(
                    f"  step {step:4d}  loss {loss:.4f}  gradient check: "
                    f"{'passed' if report.passed else 'FAILED'} "
                    f"(difference {report.difference:.1e}, {report.evaluations} evaluations, "
                    f"{report.coverage:.0%} of the weights probed one by one so far)"
                )
                if not guard.active:
                    print(f"  step {step:4d}  the guard switched itself off after 3 passing checks")
    return params, guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="JSON-lines log file (default: a temporary file)")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    log = args.log or str(pathlib.Path(tempfile.mkdtemp()) / "numpy_training_loop.jsonl")

    print(f"Training a 3-32-1 tanh network by hand for {args.steps} steps, with a Guard:")
    guarded, guard = train(args.steps, log)
    assert guard is not None
    final_loss = loss_and_grad(guarded, *make_data(np.random.default_rng(2), 256))[0]
    print(f"  held-out loss after training: {final_loss:.4f}")

    plain, _ = train(args.steps, None)
    identical = all(np.array_equal(guarded[k], plain[k]) for k in guarded)
    print(f"\nSame training without the guard gives bit-identical weights: {identical}")
    print(f"{len(guard.reports)} checks logged to {log}; read them with: gradguard report {log}")
    if not identical:
        raise SystemExit("training with the guard differed from training without it")


if __name__ == "__main__":
    main()
