"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

__all__ = ["Stopwatch", "median", "ms", "per_call_ns", "tensorflow_header", "timed"]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call, and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    """The median, as a float."""
    return float(statistics.median(values))


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for a table cell."""
    return f"{seconds * 1e3:,.1f}"


def per_call_ns(function: Callable[[], Any], number: int, repeat: int) -> float:
    """Nanoseconds per call: ``timeit`` over ``number`` calls, median of ``repeat``."""
    return statistics.median(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e9


class Stopwatch:
    """Wraps a callable and adds up the wall time spent inside it, and the calls made."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.elapsed = 0.0
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.function(*args)
        finally:
            self.elapsed += time.perf_counter() - start
            self.calls += 1


def tensorflow_header(title: str, quick: bool, threads_note: str = "") -> list[str]:
    """The Markdown header of a TensorFlow benchmark: date, versions, CPU and GPUs."""
    import keras
    import numpy as np
    import tensorflow as tf

    import gradguard as gg

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    gpus = tf.config.list_physical_devices("GPU")
    return [
        f"# {title}"
        + (" (--quick: a smoke test, few repetitions; not a measurement)" if quick else ""),
        "",
        f"- date: {now}",
        f"- Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__}, NumPy {np.__version__}, gradguard {gg.__version__}",
        f"- CPU: {platform.machine()}, {os.cpu_count()} logical CPUs; GPUs visible to "
        f"TensorFlow: {len(gpus)}{threads_note}",
        "",
    ]
