"""gradguard.policy: one failure policy; an inconclusive check goes through it like a failure."""

from __future__ import annotations

import warnings

import attrs
import numpy as np
import pytest
import toy

import gradguard as gg
import gradguard.guard
from gradguard.policy import DEFAULT_ON_FAILURE, ON_FAILURE, apply_policy, validate_on_failure
from gradguard.results import CheckReport, Status


def _report(bug: float = 1.0) -> CheckReport:
    def grad(p: toy.Params) -> toy.Params:
        g = toy.grad(p)
        return {"W": g["W"], "b": bug * g["b"]}

    params = {"W": np.ones((3, 2)), "b": np.zeros(2)}
    return gg.check(toy.loss, params, grad, seed=0)


def _inconclusive() -> CheckReport:
    """A real failing report of the toy, turned into what the engine reports when the
    finite differences could not judge ``b``."""
    report = _report(bug=2.0)
    params = tuple(
        attrs.evolve(p, status=Status.INCONCLUSIVE) if p.status is Status.FAIL else p
        for p in report.params
    )
    return attrs.evolve(report, params=params, status=Status.INCONCLUSIVE, passed=False)


def test_the_policy_values_and_default() -> None:
    """Four values; "stop" by default, as Keras' TerminateOnNaN stops by default."""
    assert ON_FAILURE == ("stop", "raise", "warn", "log")
    assert DEFAULT_ON_FAILURE == "stop"
    with pytest.raises(gg.SettingsError, match="on_failure must be one of 'stop'"):
        validate_on_failure("halt")


@pytest.mark.parametrize("kind", ["failed", "inconclusive"])
def test_raise(kind: str) -> None:
    """'raise' raises the report's error: InconclusiveCheckError when it could not judge."""
    report = _report(bug=2.0) if kind == "failed" else _inconclusive()
    expected = gg.InconclusiveCheckError if kind == "inconclusive" else gg.GradientCheckError
    with pytest.raises(expected) as caught:
        apply_policy(report, "raise", 4)
    assert caught.type is expected and caught.value.report is report


@pytest.mark.parametrize("kind", ["failed", "inconclusive"])
def test_stop_warns_why_and_asks_to_stop(kind: str) -> None:
    """'stop' warns that training stops, what the check found and the table; returns True."""
    report = _report(bug=2.0) if kind == "failed" else _inconclusive()
    found = "FAILED on b" if kind == "failed" else "could not judge b"
    with pytest.warns(gg.GradientCheckWarning) as warned:
        assert apply_policy(report, "stop", 4) is True
    message = str(warned[0].message)
    assert message.startswith(f"gradguard stopped training at step 4: the gradient check {found}")
    assert str(report) in message


@pytest.mark.parametrize("kind", ["failed", "inconclusive"])
def test_warn_and_log_go_on(kind: str) -> None:
    """'warn' warns and goes on; 'log' is silent; neither asks to stop."""
    report = _report(bug=2.0) if kind == "failed" else _inconclusive()
    with pytest.warns(gg.GradientCheckWarning, match="training goes on"):
        assert apply_policy(report, "warn", None) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_policy(report, "log", None) is False


@pytest.mark.parametrize("on_failure", ON_FAILURE)
def test_a_passing_report_does_nothing(on_failure: str) -> None:
    """Whatever the policy, a pass neither warns, raises nor stops."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_policy(_report(), on_failure, 0) is False  # type: ignore[arg-type]


def test_the_guard_puts_an_inconclusive_check_through_its_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Guard treats an inconclusive check as a failure: it does not count towards
    max_checks, and under 'stop' it warns and sets should_stop."""
    inconclusive = _inconclusive()
    monkeypatch.setattr(gradguard.guard, "run_one", lambda *args: inconclusive)
    guard = gg.Guard(toy.loss, {"W": np.ones((3, 2))}, every=1, max_checks=1)
    with pytest.warns(gg.GradientCheckWarning, match="could not judge b"):
        assert guard.step() is inconclusive
    assert guard.should_stop and guard.active
    raising = gg.Guard(toy.loss, {"W": np.ones((3, 2))}, every=1, on_failure="raise")
    with pytest.raises(gg.InconclusiveCheckError):
        raising.step()
