"""Real Ctrl-Cs at random moments: a harness shared by the signal-safety tests of every adapter."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

__all__ = ["Trials", "in_clean_process", "sigint_trials"]


_CLEAN = "GRADGUARD_TEST_CLEAN_PROCESS"


def in_clean_process(test: Callable[..., None]) -> Callable[..., None]:
    """Run a real-SIGINT test in a fresh interpreter (the same test, by its node id).

    In the whole suite the process has TensorFlow, JAX and torch.compile loaded, with their
    thread pools; there, 1-2 of 120 SIGINTs sent to the main thread never raised (also with
    no gradguard code on the path, as measured for TensorFlow eager), which says nothing of
    a check. In a fresh process only the adapter under test is loaded. The child must pass.
    """

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        if os.environ.get(_CLEAN) == "1":
            test(*args, **kwargs)
            return
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            env={**os.environ, _CLEAN: "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    return wrapper


@attrs.frozen
class Trials:
    """What the trials saw: how many ran, were interrupted, and the first state that differed."""

    ran: int
    interrupted: int
    changed: list[str]
    lost: int  # SIGINTs sent that never raised KeyboardInterrupt anywhere
    stray: int  # KeyboardInterrupts with no SIGINT sent


def _send_after(delay: float, cancel: threading.Event, sent: threading.Event) -> None:
    if not cancel.wait(delay):
        sent.set()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def sigint_trials(
    run: Callable[[], Any],
    snapshot: Callable[[], Any],
    *,
    trials: int,
    seed: int,
    budget_s: float,
) -> Trials:
    """Run ``run()`` again and again, each time with one SIGINT sent at a random moment.

    The moment is drawn (from a generator seeded with ``seed``) uniformly over 1.2 times the
    duration of an uninterrupted run, so most land inside it. After each trial
    ``snapshot()`` must equal its value before the first. Stops after ``trials`` trials or
    ``budget_s`` seconds, whichever comes first.
    """
    assert threading.current_thread() is threading.main_thread()
    # The sender needs the GIL to send: with Python's default 5 ms switch interval a signal
    # meant for the middle of a 2 ms check would land after it.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    try:
        return _trials(run, snapshot, trials=trials, seed=seed, budget_s=budget_s)
    finally:
        sys.setswitchinterval(interval)


def _trials(
    run: Callable[[], Any],
    snapshot: Callable[[], Any],
    *,
    trials: int,
    seed: int,
    budget_s: float,
) -> Trials:
    rng = np.random.default_rng(seed)
    before = snapshot()
    run()  # a warm-up: plugin loading, tracing
    started = time.perf_counter()
    run()
    span = 1.2 * (time.perf_counter() - started)
    assert snapshot() == before, "an uninterrupted run changed the state"
    ran = interrupted = lost = stray = 0
    changed: list[str] = []
    deadline = time.perf_counter() + budget_s
    while ran < trials and time.perf_counter() < deadline:
        cancel, sent = threading.Event(), threading.Event()
        sender = threading.Thread(
            target=_send_after, args=(float(rng.uniform(0.0, span)), cancel, sent)
        )
        caught = False
        try:
            try:
                sender.start()
                run()
            finally:
                cancel.set()
                sender.join()
        except KeyboardInterrupt:
            caught = True
        sender.join()
        ran += 1
        interrupted += caught
        lost += sent.is_set() and not caught
        stray += caught and not sent.is_set()
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            changed.append(f"trial {ran}: the SIGINT handler was left changed")
        after = snapshot()
        if after != before:
            changed.append(f"trial {ran}: state changed (interrupted={caught})")
    return Trials(ran=ran, interrupted=interrupted, changed=changed, lost=lost, stray=stray)
