"""Imports point down only: engine <- kit <- adapters <- plugins <- front doors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gradguard"

# What each layer may import from gradguard, at run time (TYPE_CHECKING imports name types only).
ALLOWED = {
    "engine": ("gradguard.engine", "gradguard.errors", "gradguard.results"),
    "kit": ("gradguard.engine", "gradguard.errors", "gradguard.results", "gradguard.kit"),
}


def _runtime_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name.split(".")[0] == "gradguard"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_from_below(layer: str) -> None:
    """The engine knows no kit, front door or run state; the kit knows no front door."""
    for path in sorted((ROOT / layer).glob("*.py")):
        for name in _runtime_imports(path):
            assert name.startswith(ALLOWED[layer]), f"{path.name} imports {name}"
