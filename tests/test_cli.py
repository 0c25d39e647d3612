"""The command line, the module entry point, and the promise that import is light."""

from __future__ import annotations

import json
import subprocess
import sys

import gradguard as gg
from gradguard import cli

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")


def test_import_gradguard_imports_no_ml_framework() -> None:
    """`import gradguard` (and a NumPy check) loads no ML framework."""
    code = (
        "import sys, json, numpy as np, gradguard as gg;"
        "gg.check(lambda w: float((w**2).sum()), np.ones(3), lambda w: 2*w);"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_python_dash_m_gradguard_prints_the_version() -> None:
    """`python -m gradguard --version` works like the console script."""
    out = subprocess.run(
        [sys.executable, "-m", "gradguard", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"gradguard {gg.__version__}"


def test_plugins_command_lists_builtins(capsys) -> None:  # type: ignore[no-untyped-def]
    """`gradguard plugins` lists the built-in plugins and the hooks they implement."""
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "gradguard_adapter_claim" in out
    assert "jsonl-reporter" in out and "gradguard_check_completed" in out


def test_no_command_prints_help_and_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    """Without a command the CLI shows its help and returns 2 (unusable input)."""
    assert cli.main([]) == 2
    assert "usage: gradguard" in capsys.readouterr().out
