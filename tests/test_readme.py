"""The README's first check runs as printed, so the first thing a user tries cannot rot."""

from __future__ import annotations

import pathlib
import re

import pytest

import gradguard as gg

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _first_check() -> str:
    section = README.read_text().split("## Your first check")[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]


def test_readme_first_check_fails_on_the_bias_as_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README example names b as wrong, with the hint the README shows."""
    with pytest.raises(gg.GradientCheckError) as caught:
        exec(compile(_first_check(), str(README), "exec"), {"__name__": "readme"})
    assert caught.value.report.failed == ("b",)
    out = capsys.readouterr().out
    assert "gradguard: FAILED, 1 of 2 tensors wrong: b" in out
    assert "a wrong derivative on its path (an activation's)?" in out
    printed = README.read_text().split("## Your first check")[1]
    assert "gradguard: FAILED, 1 of 2 tensors wrong: b" in printed


def test_readme_first_check_passes_once_fixed() -> None:
    """Applying the fix the README suggests makes the check pass."""
    code = _first_check().replace('"b": d.sum(axis=0)}', '"b": (d * (1 - a**2)).sum(axis=0)}')
    assert code != _first_check()
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
