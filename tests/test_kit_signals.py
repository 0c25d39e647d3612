"""Ctrl-C during a check: deferred while state is half-changed, then delivered (NumPy adapter)."""

from __future__ import annotations

import contextlib
import gc
import random
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from interrupts import sigint_trials

import gradguard as gg
from gradguard.kit.signals import deferred, interrupt_pending, protected, session


def test_a_sigint_inside_a_section_is_delivered_when_the_section_ends() -> None:
    """The section runs to its end; KeyboardInterrupt comes right after; the handler is back."""
    finished = False
    with pytest.raises(KeyboardInterrupt), session(), deferred():
        signal.raise_signal(signal.SIGINT)
        assert interrupt_pending()
        finished = True
    assert finished and not interrupt_pending()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_a_section_a_sigint_interrupts_at_once() -> None:
    """A session alone defers nothing: a long loss evaluation stays interruptible."""
    reached = False
    with pytest.raises(KeyboardInterrupt), session():
        signal.raise_signal(signal.SIGINT)
        reached = True
    assert not reached


def test_the_applications_own_handler_is_called_and_kept() -> None:
    """A handler the application installed gets the deferred SIGINT, and stays installed."""
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)

    old = signal.signal(signal.SIGINT, handler)
    try:
        with session(), deferred():
            signal.raise_signal(signal.SIGINT)
            assert calls == []
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("where", ["gc callback", "__del__", "weakref.finalize"])
def test_a_sigint_that_lands_where_an_exception_is_dropped_is_held_not_lost(where: str) -> None:
    """A SIGINT handled inside a gc callback (pytest plugins such as hypothesis register one),
    a ``__del__`` or a weak reference's finalizer would raise a KeyboardInterrupt that Python
    only prints as unraisable: the Ctrl-C was lost. It is held and delivered at the next
    section's end."""

    fired: list[bool] = []

    def interrupt(*_: object) -> None:
        if not fired:  # once: a later automatic collection must not interrupt the test
            fired.append(True)
            signal.raise_signal(signal.SIGINT)

    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    class Target:
        pass

    after = False
    if where == "gc callback":
        gc.callbacks.append(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), session():
            if where == "gc callback":
                gc.collect()
            elif where == "__del__":
                Finalized()  # dropped at once: __del__ runs here
            else:
                target = Target()
                weakref.finalize(target, signal.raise_signal, signal.SIGINT)
                del target  # the finalizer runs here, from weakref.finalize.__call__
            assert interrupt_pending()
            with deferred():
                after = True
            pytest.fail("the held SIGINT was not delivered at the end of the section")
    finally:
        if interrupt in gc.callbacks:
            gc.callbacks.remove(interrupt)
    assert after and not interrupt_pending()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_is_left_alone() -> None:
    """With SIGINT ignored there is no KeyboardInterrupt to defer: no handler is installed."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with session(), deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, old)


_MODE: list[str] = []


@contextlib.contextmanager
def _mode() -> Iterator[None]:
    """A global mode whose enter is 'interrupted' right after it changed the state."""
    _MODE.append("on")
    signal.raise_signal(signal.SIGINT)
    try:
        yield
    finally:
        _MODE.pop()


def test_a_protected_enter_never_raises_after_changing_state() -> None:
    """The interrupt that came inside __enter__, after the mode was entered, comes out of the
    with statement with the mode already left: nothing stays entered, the body never runs."""
    deadline = time.monotonic() + 10.0
    with pytest.raises(KeyboardInterrupt), session(), protected(_mode()):
        while time.monotonic() < deadline:  # the interrupt lands here, within milliseconds
            pass
    assert _MODE == [] and time.monotonic() < deadline
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sections_off_the_main_thread_change_nothing() -> None:
    """Only the main thread receives SIGINT: elsewhere a session and a section are no-ops."""
    seen: list[object] = []

    def work() -> None:
        with session(), deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


# -- real SIGINTs through real checks ---------------------------------------------------------

_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(16, 12))
PARAMS = {"W": _RNG.normal(size=(12, 6)), "b": _RNG.normal(size=6)}


def _loss(p: dict[str, Any]) -> float:
    np.random.normal()  # draws from the global stream, which the check must put back
    return float(np.sum(np.tanh(_X @ p["W"] + p["b"]) ** 2))


def _grad(p: dict[str, Any]) -> dict[str, Any]:
    t = np.tanh(_X @ p["W"] + p["b"])
    g = 2 * t * (1 - t * t)
    return {"W": _X.T @ g, "b": g.sum(0)}


def _numpy_state() -> tuple[Any, ...]:
    state = np.random.get_state()
    return (
        PARAMS["W"].tobytes(),
        PARAMS["b"].tobytes(),
        state[1].tobytes(),
        state[2:],
        random.getstate(),
    )


def test_real_sigints_at_random_moments_leave_numpy_params_and_rngs_whole() -> None:
    """Hundreds of checks, each hit by one real SIGINT at a random moment: every time the
    params and both global RNG states are bit-identical afterwards, the SIGINT handler is
    back, and each Ctrl-C reached the caller as KeyboardInterrupt exactly once."""
    trials = sigint_trials(
        lambda: gg.check(_loss, PARAMS, _grad, sample=12, directions=2, seed=1),
        _numpy_state,
        trials=200,
        seed=0,
        budget_s=8.0,
    )
    assert trials.changed == []
    assert trials.lost == 0 and trials.stray == 0
    assert trials.ran >= 50 and trials.interrupted >= trials.ran // 5, trials
