"""Shared test configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gradguard.guard import DISABLE_ENV

pytest_plugins = ["pytester"]  # the pytest plugin is tested in real child sessions


@pytest.fixture(autouse=True)
def no_disable_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Guards and callbacks run in every test, whatever GRADGUARD_DISABLE the caller set."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    yield
