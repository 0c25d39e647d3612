"""NumPy's BLAS on one thread while a check runs beside another framework's thread pool.

The engine's arithmetic is NumPy: dot products and norms over flat vectors, which NumPy hands
to its BLAS. OpenBLAS splits a dot product of more than 10,000 elements over its threads, and
its worker threads then *spin*, busy-waiting for the next call, for a while after each one.
When the loss runs in PyTorch, TensorFlow or JAX, those spinning threads take the cores the
framework's own pool needs: the next forward pass waits for a thread that is not scheduled.
Measured on 2 cores (docs/benchmarks.md): a torch forward of the 784-64-10 MLP right after one
``np.dot`` of 50,176 elements took ~200x its usual time, and a default check of that MLP 15x
as long as with ``OPENBLAS_NUM_THREADS=1``.

:class:`NumpyBlasPinned` pins NumPy's BLAS to one thread for the duration of a check and puts
its thread count back after (:func:`gradguard.api.run_one`, the one place every check goes
through). The engine's vectors are small next to a forward pass, so one thread costs nothing
measurable; the framework's pool is left alone. A check whose loss computes in NumPy (the
NumPy adapter: :attr:`gradguard.Adapter.numpy_loss`) is not pinned: there the loss and the
engine share one pool, which does not fight itself, and a big NumPy model wants its threads.

Only NumPy's own BLAS is pinned: the libraries that ``threadpoolctl`` finds inside NumPy's
installation (a wheel's bundled OpenBLAS), or else those of the kind NumPy was built against.
A framework's own BLAS (MKL linked into torch) and OpenMP pools are never touched. The
libraries are found once per process (~15 ms, at the first check); pinning and unpinning
then cost a few microseconds. Checks on several threads at once share one pinning: the first
to start pins, the last to finish puts the count back.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from gradguard.kit.signals import deferred, entered, left, transition

__all__ = ["NumpyBlasPinned", "numpy_blas_libraries"]

_lock = threading.Lock()
_libraries: list[Any] | None = None  # threadpoolctl LibController objects, found once
_holders = 0  # checks currently holding the pin
_saved: list[tuple[Any, int]] = []  # (library, thread count before the first holder)


def _numpy_directories() -> tuple[str, ...]:
    """Where a NumPy wheel keeps its bundled libraries (``numpy.libs``, ``numpy/.dylibs``)."""
    package = os.path.dirname(os.path.realpath(np.__file__))
    return (package + os.sep, package + ".libs" + os.sep)


def _built_against() -> str | None:
    """The BLAS kind NumPy was built against (``openblas``, ``mkl``, ``blis``), if it says."""
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.25
        name = str(config["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # an older NumPy, or a build that records no BLAS
        return None
    for kind in ("openblas", "mkl", "blis"):
        if kind in name:
            return kind
    return None


def _find() -> list[Any]:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency; absent only in a broken install: pin nothing
        return []
    try:
        controllers = ThreadpoolController().lib_controllers
    except Exception:  # a library threadpoolctl cannot inspect: pin nothing rather than fail
        return []
    blas = [c for c in controllers if c.user_api == "blas"]
    inside = _numpy_directories()
    own = [c for c in blas if os.path.realpath(c.filepath).startswith(inside)]
    if own:
        return own
    kind = _built_against()
    return [c for c in blas if kind is not None and c.internal_api == kind]


def numpy_blas_libraries() -> list[Any]:
    """NumPy's BLAS libraries as ``threadpoolctl`` controllers (found once per process)."""
    global _libraries
    with _lock:
        if _libraries is None:
            _libraries = _find()
        return _libraries


def _pin() -> None:
    global _holders
    with _lock:
        _holders += 1
        if _holders == 1:
            for library in _libraries or ():
                threads = library.get_num_threads()
                if threads is not None and threads > 1:
                    _saved.append((library, threads))
                    library.set_num_threads(1)


def _unpin() -> None:
    global _holders
    with _lock:
        _holders -= 1
        if _holders == 0:
            while _saved:
                library, threads = _saved.pop()
                library.set_num_threads(threads)


class NumpyBlasPinned:
    """``with NumpyBlasPinned(active):`` NumPy's BLAS on one thread inside, as before after.

    Args:
        active: Whether to pin (``False``: a no-op, for a loss that computes in NumPy).
    """

    __slots__ = ("_active",)

    def __init__(self, active: bool = True) -> None:
        self._active = active and bool(numpy_blas_libraries())

    @transition
    def __enter__(self) -> NumpyBlasPinned:
        if self._active:
            with deferred():  # pinned and counted, or neither, whenever a Ctrl-C comes
                _pin()
            entered(_unpin)
        else:
            entered(lambda: None)
        return self

    @transition
    def __exit__(self, *exc: object) -> None:
        if self._active:
            with deferred():
                _unpin()
        left()
