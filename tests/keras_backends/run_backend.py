"""One Keras backend's run of the callback tests: ``KERAS_BACKEND`` is set before this starts.

Run by tests/test_keras_backends.py in a fresh process per backend. Prints one line per
finding; the test asserts on them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import keras
import numpy as np

from gradguard_keras import GradCheckCallback


def scaled_square(scale: float) -> Any:
    """x**2 with a keras.ops.custom_gradient whose backward is ``scale`` x the true one."""

    @keras.ops.custom_gradient
    def square(x: Any) -> Any:
        def grad(*args: Any, upstream: Any = None) -> Any:
            if upstream is None:
                (upstream,) = args
            return upstream * 2.0 * x * scale

        return x * x, grad

    return square


class Square(keras.layers.Layer):
    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x: Any) -> Any:
        return scaled_square(self.scale)(x)


def build(scale: float) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="hidden"),
            Square(scale, name="square"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def weights(model: Any) -> list[bytes]:
    return [np.asarray(keras.ops.convert_to_numpy(v.value)).tobytes() for v in model.variables]


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    probe = (x[:16], y[:16])
    print("backend", keras.backend.backend())

    buggy = build(1.5)
    cb = GradCheckCallback(probe, every=2, max_checks=None, on_failure="log", seed=0)
    buggy.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    print("buggy checks", len(cb.reports))
    print("buggy failed", ",".join(sorted(set().union(*(r.failed for r in cb.reports)))))
    print("buggy strategy", ",".join(sorted({str(r.notes.get("strategy")) for r in cb.reports})))

    plain = build(1.0)
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    guarded = build(1.0)
    cb = GradCheckCallback(probe, every=2, max_checks=2, on_failure="raise", seed=0)
    guarded.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
    print("correct checks", len(cb.reports), "passed", all(r.passed for r in cb.reports))
    print("bit-identical", weights(plain) == weights(guarded))
    print("adapter", cb.reports[0].adapter)
    print("strategy", ",".join(sorted({str(r.notes.get("strategy")) for r in cb.reports})))
    screened = min(sum(p.judged_by == "screen" for p in r.params) for r in cb.reports)
    print("screened jointly", screened, "of", len(cb.reports[0].params))
    print("evaluation", cb.reports[0].notes.get("evaluation"))


if __name__ == "__main__":
    assert os.environ.get("KERAS_BACKEND"), "set KERAS_BACKEND before running"
    sys.exit(main())
