"""The adapter written in docs/plugins.md passes the conformance suite, as the page says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gradguard as gg

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
_SOURCE = next(b for b in _BLOCKS if "class BoxView" in b) + next(
    b for b in _BLOCKS if "class TestBoxAdapter" in b
)
_NAMESPACE: dict[str, Any] = {"__name__": "docs_adapter_example"}
exec(compile(_SOURCE, str(DOCS), "exec"), _NAMESPACE)

TestBoxAdapter = _NAMESPACE["TestBoxAdapter"]  # collected here, run by pytest


@pytest.fixture(autouse=True)
def box_plugin() -> Iterator[None]:
    """The docs' Box plugin is registered for each test, and taken out after."""
    gg.register(_NAMESPACE["BoxPlugin"](), name="box")
    yield
    gg.unregister("box")
