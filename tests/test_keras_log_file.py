"""A Keras fit whose GradCheckCallback logs to a FIFO: it finishes, with one warning.

Real TensorFlow and Keras (CPU), in its own module so other tests need not import them.
"""

from __future__ import annotations

import os
import pathlib
import threading
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import gradguard as gg
from gradguard_tensorflow import GradCheckCallback

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 5)).astype(np.float32)
Y = RNG.standard_normal((16, 2)).astype(np.float32)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fit_logging_to_a_fifo_finishes_with_one_warning(tmp_path: pathlib.Path) -> None:
    """log_file a FIFO with no reader (appending would block): fit runs to the end, the checks
    are made, and one GradGuardLogWarning names the FIFO."""
    fifo = tmp_path / "fit.fifo"
    os.mkfifo(fifo)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="out")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = GradCheckCallback((X[:8], Y[:8]), every=1, max_checks=2, log_file=fifo)
    outcome: dict[str, object] = {}

    def fit() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
        outcome["warnings"] = [
            str(w.message) for w in caught if issubclass(w.category, gg.GradGuardLogWarning)
        ]

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    thread.join(timeout=300)
    if thread.is_alive():  # unblock a writer stuck in open() before failing
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("fit with a FIFO log path blocked")
    assert len(callback.reports) == 2 and not callback.active
    (message,) = outcome["warnings"]  # type: ignore[misc]
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in message
