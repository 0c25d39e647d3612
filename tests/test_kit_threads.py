"""kit.threads: NumPy's BLAS on one thread during a check whose loss runs in another framework."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import nn

import gradguard as gg
from gradguard.kit.threads import NumpyBlasPinned, numpy_blas_libraries

torch.set_num_threads(1)


def blas_threads() -> list[int]:
    return [library.get_num_threads() for library in numpy_blas_libraries()]


@pytest.fixture
def two_threads() -> Iterator[None]:
    """NumPy's BLAS on 2 threads for the test (whatever the environment set), then back."""
    assert numpy_blas_libraries(), "NumPy's BLAS was not found (threadpoolctl)"
    with ThreadpoolController().limit(limits=2, user_api="blas"):
        assert blas_threads() == [2] * len(blas_threads())
        yield


def test_numpy_blas_is_found_and_is_numpys_own() -> None:
    """The pinned libraries are BLAS libraries NumPy loaded (a wheel's bundled OpenBLAS here),
    never an OpenMP pool."""
    libraries = numpy_blas_libraries()
    assert libraries and all(library.user_api == "blas" for library in libraries)


def test_pinned_inside_restored_after_also_on_an_exception(two_threads: None) -> None:
    """One thread inside; the count before comes back after, also when the body raises."""
    with NumpyBlasPinned():
        assert blas_threads() == [1] * len(blas_threads())
    assert set(blas_threads()) == {2}
    with pytest.raises(KeyboardInterrupt), NumpyBlasPinned():
        raise KeyboardInterrupt
    assert set(blas_threads()) == {2}
    with NumpyBlasPinned(active=False):
        assert set(blas_threads()) == {2}


def test_overlapping_checks_on_two_threads_share_one_pin(two_threads: None) -> None:
    """The first holder pins, the last one to leave restores: a check that ends while another
    runs does not unpin it."""
    inside, release, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with NumpyBlasPinned():
            inside.set()
            release.wait(10)
            seen.append(blas_threads())

    thread = threading.Thread(target=other)
    with NumpyBlasPinned():
        thread.start()
        assert inside.wait(10)
    assert set(blas_threads()) == {1}  # the other check still runs
    release.set()
    thread.join(10)
    assert seen == [[1] * len(seen[0])] and set(blas_threads()) == {2}


def test_a_torch_check_runs_numpy_blas_on_one_thread_and_a_numpy_check_does_not(
    two_threads: None,
) -> None:
    """Inside a torch check the loss sees NumPy's BLAS on one thread; inside a NumPy check
    (whose loss is NumPy) the user's thread count; after both, the count as before."""
    seen: dict[str, list[int]] = {}
    model = nn.Linear(3, 1).double()
    x = torch.ones(4, 3, dtype=torch.float64)

    def torch_loss(m: nn.Module) -> torch.Tensor:
        seen["torch"] = blas_threads()
        return F.mse_loss(m(x), torch.zeros(4, 1, dtype=torch.float64))

    assert gg.check(torch_loss, model, seed=0).passed
    w = np.ones(3)

    def numpy_loss(p: dict[str, np.ndarray]) -> float:
        seen["numpy"] = blas_threads()
        return float(np.sum(p["w"] ** 2))

    assert gg.check(numpy_loss, {"w": w}, lambda p: {"w": 2 * p["w"]}, seed=0).passed
    assert set(seen["torch"]) == {1} and set(seen["numpy"]) == {2}
    assert set(blas_threads()) == {2}
