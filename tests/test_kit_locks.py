"""Checks of the same parameters from two threads take turns; logs stay valid (NumPy adapter)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from toy import grad, loss

import gradguard as gg
from gradguard.kit.locks import default_keys


def _params() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(5)
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}


def _bytes(params: dict[str, np.ndarray[Any, Any]]) -> list[bytes]:
    return [params["W"].tobytes(), params["b"].tobytes()]


def _in_threads(*works: Callable[[], None]) -> list[BaseException]:
    failures: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a check never finished"
    return failures


def test_a_view_and_its_base_array_are_one_key() -> None:
    """Arrays sharing memory (a transpose, a slice) share a key; distinct arrays do not."""
    w = np.ones((3, 2))
    assert default_keys({"W": w}) == default_keys([w.T]) == default_keys(w[1:])
    assert default_keys(w).isdisjoint(default_keys(np.ones((3, 2))))


def test_two_threads_checking_the_same_arrays_never_corrupt_them() -> None:
    """Two threads each check the same arrays 150 times (one through a dict, one through a
    transposed view): the checks take turns, every one passes, and the arrays end
    bit-identical (before, the second check saved a perturbed value as the original)."""
    params = _params()
    before = _bytes(params)
    view = [params["W"].T, params["b"]]

    def view_loss(p: list[Any]) -> float:
        return loss({"W": p[0].T, "b": p[1]})

    def view_grad(p: list[Any]) -> list[Any]:
        g = grad({"W": p[0].T, "b": p[1]})
        return [g["W"].T, g["b"]]

    def by_dict() -> None:
        for _ in range(150):
            gg.check(loss, params, grad, seed=0).raise_for_failure()

    def by_view() -> None:
        for _ in range(150):
            gg.check(view_loss, view, view_grad, seed=0).raise_for_failure()

    assert _in_threads(by_dict, by_view) == []
    assert _bytes(params) == before


def test_one_guard_stepped_from_two_threads_never_corrupts_the_params() -> None:
    """A Guard whose step() is called from two threads at once checks one step at a time."""
    params = _params()
    before = _bytes(params)
    guard = gg.Guard(loss, params, grad, every=1, max_checks=None)

    def steps() -> None:
        for _ in range(100):
            guard.step()

    assert _in_threads(steps, steps) == []
    assert _bytes(params) == before
    assert len(guard.reports) == 200 and all(r.passed for r in guard.reports)


def test_a_check_inside_a_check_of_the_same_arrays_is_refused() -> None:
    """A loss that checks its own params cannot wait for itself: ConcurrentCheckError."""
    params = _params()
    before = _bytes(params)

    def nested(p: dict[str, Any]) -> float:
        gg.check(loss, params, grad, seed=0)
        return loss(p)

    with pytest.raises(gg.ConcurrentCheckError, match="already running in this thread"):
        gg.check(nested, params, grad, seed=0)
    assert _bytes(params) == before


def _records(path: pathlib.Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line a whole JSON object


def test_two_guards_in_two_threads_write_one_log_of_whole_lines(tmp_path: pathlib.Path) -> None:
    """Two Guards on different params, stepped in two threads, append to one log file:
    every line is one valid record, none lost."""
    log = tmp_path / "shared.jsonl"

    def guard_steps() -> None:
        guard = gg.Guard(loss, _params(), grad, every=1, max_checks=None, log_file=log)
        for _ in range(60):
            guard.step()

    assert _in_threads(guard_steps, guard_steps) == []
    records = _records(log)
    assert len(records) == 120 and all(r["event"] == "gradcheck" for r in records)


_WRITER = """
import sys
sys.path.insert(0, {tests!r})
import gradguard as gg, numpy as np
from toy import grad, loss
rng = np.random.default_rng(int(sys.argv[1]))
guard = gg.Guard(loss, {{"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}}, grad,
                 every=1, max_checks=None, log_file=sys.argv[2])
for _ in range(60):
    guard.step()
"""


def test_two_processes_write_one_log_of_whole_lines(tmp_path: pathlib.Path) -> None:
    """Two processes, each with a Guard, append to one log file: every line is whole."""
    log = tmp_path / "shared.jsonl"
    code = _WRITER.format(tests=str(pathlib.Path(__file__).parent))
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(seed), str(log)]) for seed in (1, 2)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    records = _records(log)
    assert len(records) == 120 and len({r["run_id"] for r in records}) == 2
