"""The conformance suite itself: it passes a sound adapter and fails a leaky one."""

from __future__ import annotations

import pytest

LEAKY = """
import numpy as np
import gradguard as gg
from gradguard_numpy import NumpyAdapter, NumpyView
from gradguard.testing import AdapterConformance, ConformanceCase

X = np.linspace(-1.0, 1.0, 6).reshape(3, 2)


class Leaky(NumpyView):
    adapter = "leaky"

    def restore(self):
        pass  # {restore}


class LeakyAdapter(NumpyAdapter):
    name = "leaky"

    def open(self, params, loss, grad):
        return Leaky(params, loss, grad)


class Plugin:
    @gg.hookimpl
    def gradguard_adapter_claim(self, params):
        return LeakyAdapter() if isinstance(params, dict) and "v" in params else None


gg.register(Plugin(), name="leaky")


def loss(p):
    return float(np.sum(np.sin(X @ p["v"])))


def grad(p):
    return {{"v": X.T @ np.cos(X @ p["v"])}}


def twice():
    w = np.ones(2)
    return {{"v": w, "u": w}}


class TestLeaky(AdapterConformance):
    case = ConformanceCase(
        adapter="leaky",
        make=lambda: {{"v": np.array([0.3, -0.7])}},
        loss=loss,
        grad=grad,
        wrong_grad=lambda p: {{"v": 2 * grad(p)["v"]}},
        wrong_tensor="v",
        snapshot=lambda p: [p["v"].copy()],
        vector_loss=lambda p: X @ p["v"],
        misshapen_grad=lambda p: {{"v": np.zeros(3)}},
        nan_grad=lambda p: {{"v": np.full(2, np.nan)}},
        shared=twice,
    )
"""


@pytest.mark.parametrize(
    ("restore", "failed"),
    [("super().restore()", 0), ("nothing: the leak", 1)],
    ids=["sound", "leaky"],
)
def test_the_suite_fails_exactly_a_view_that_does_not_restore(
    pytester: pytest.Pytester, restore: str, failed: int
) -> None:
    """A view whose restore() forgets the originals fails the mid-probe interrupt test, and
    only it: every other test leaves the params restored by the engine's own resets."""
    source = LEAKY.format(restore=restore)
    if failed == 0:
        source = source.replace("        pass  # super().restore()", "        super().restore()")
    pytester.makepyfile(test_leaky=source)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=10 - failed, failed=failed)
    if failed:
        result.stdout.fnmatch_lines(["*test_an_interrupt_in_the_middle_of_a_probe*"])
