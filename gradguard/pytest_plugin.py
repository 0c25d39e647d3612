"""gradguard's pytest plugin: a gradient test in one line.

Installed with gradguard (entry point ``pytest11``), so every test session has it::

    def test_my_layer_backward(gradcheck):
        gradcheck(loss, params, grad)          # or gradcheck(loss, model) with an autodiff adapter

A failing check fails the test with the per-tensor table (worst element, analytic vs numeric,
hint) as the assertion message, and says how to replay it.

Options:
    --gradguard-log PATH   append every check's record of the session to one JSON-lines file
                           (each record's ``label`` is the test's node id; ``gradguard report``
                           summarizes it test by test)
    --gradguard-seed N     use this seed for every check (replays a failure: the message of a
                           failing check gives its seed)

This module imports no ML framework; the adapters import theirs when a test hands them a model.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from gradguard.api import run_one
from gradguard.context import CheckContext
from gradguard.engine import Settings
from gradguard.errors import GradientCheckError, InconclusiveCheckError
from gradguard.results import CheckReport, Status

__all__ = ["GradCheck", "gradcheck"]

_RUN_ID = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradguard", "gradient checks (gradguard)")
    group.addoption(
        "--gradguard-log",
        metavar="PATH",
        default=None,
        help="append the record of every gradient check of the session to this JSON-lines file",
    )
    group.addoption(
        "--gradguard-seed",
        metavar="N",
        type=int,
        default=None,
        help="seed every gradient check with N (replays a failing check)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RUN_ID] = f"pytest-{uuid.uuid4().hex[:8]}"


class GradCheck:
    """The ``gradcheck`` fixture's value: call it like :func:`gradguard.check`.

    Every check made through it is logged to ``--gradguard-log`` (if given) under the test's
    node id, seeded with ``--gradguard-seed`` (if given), and kept in :attr:`reports`.
    """

    def __init__(self, nodeid: str, log_file: str | None, seed: int | None, run_id: str) -> None:
        self.nodeid = nodeid
        self.log_file = log_file
        self.seed = seed
        self.run_id = run_id
        self.reports: list[CheckReport] = []

    def __call__(
        self,
        loss: Callable[..., Any],
        params: Any,
        grad: Any = None,
        **options: Any,
    ) -> CheckReport:
        """Check the gradient; fail the test with the readable table if it is wrong.

        Args:
            loss, params, grad: As for :func:`gradguard.check`.
            **options: ``eps``, ``tolerance``, ``sample``, ``directions``, ``seed``,
                ``tensors``, ``order``, ``mode`` (``order=2`` with an autodiff adapter:
                ``hvp=`` is for :func:`gradguard.check`); an explicit ``seed`` wins over
                ``--gradguard-seed``.

        Returns:
            The passing :class:`~gradguard.CheckReport`.
        """
        __tracebackhide__ = True
        if self.seed is not None:
            options.setdefault("seed", self.seed)
        context = CheckContext(
            source="pytest", run_id=self.run_id, log_file=self.log_file, label=self.nodeid
        )
        report = run_one(loss, params, grad, Settings(**options), context)
        self.reports.append(report)
        if not report.passed:
            message = (
                f"{report}\n\nreplay this check with: pytest {self.nodeid} "
                f"--gradguard-seed {report.seed}"
            )
            if report.status is Status.INCONCLUSIVE:  # not a pass either: the test fails
                raise InconclusiveCheckError(message, report)
            raise GradientCheckError(message, report)
        return report


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> GradCheck:
    """Check gradients in one line: ``gradcheck(loss, params, grad)``; failures fail the test."""
    config = request.config
    log = config.getoption("--gradguard-log")
    return GradCheck(
        nodeid=request.node.nodeid,
        log_file=None if log is None else os.path.abspath(log),
        seed=config.getoption("--gradguard-seed"),
        run_id=config.stash[_RUN_ID],
    )
