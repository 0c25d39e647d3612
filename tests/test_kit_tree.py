"""Walking nested params containers, naming leaves, matching a gradient's structure."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from gradguard import GradientError
from gradguard.kit.tree import path_name, rebuild, walk, walk_like


class Pair(NamedTuple):
    left: object
    right: object


def test_walk_order_and_names() -> None:
    """Dict insertion order, then positions; names join the path with '.'; a leaf is 'params'."""
    tree = {"b": [1, 2], "a": {"x": 3}, "t": Pair(4, 5)}
    assert [(path_name(p), leaf) for p, leaf in walk(tree)] == [
        ("b.0", 1),
        ("b.1", 2),
        ("a.x", 3),
        ("t.0", 4),
        ("t.1", 5),
    ]
    assert list(walk(7)) == [((), 7)]
    assert path_name(()) == "params"


def test_rebuild_keeps_container_types() -> None:
    """rebuild() puts new leaves into the same dicts, lists and named tuples."""
    tree = {"b": [1, 2], "t": Pair(4, 5)}
    rebuilt = rebuild(tree, (10 * leaf for _, leaf in walk(tree)))
    assert rebuilt == {"b": [10, 20], "t": Pair(40, 50)} and isinstance(rebuilt["t"], Pair)


def test_walk_like_yields_the_other_trees_leaves() -> None:
    """A gradient with the same structure is walked in the params' order."""
    assert list(walk_like({"w": 1, "b": [2]}, {"b": [20], "w": 10})) == [
        (("w",), 10),
        (("b", 0), 20),
    ]


@pytest.mark.parametrize(
    ("template", "other", "match"),
    [
        ({"W1": 1}, {"dW1": 1}, r"missing keys \['W1'\] and unexpected keys \['dW1'\]"),
        ({"a": {"b": 1}}, {"a": [1]}, "the gradient for 'a' is a list, but params there is a dict"),
        ([1, 2], [1], "is a list of length 1, but params there is a list of length 2"),
    ],
)
def test_walk_like_names_the_mismatch(template: object, other: object, match: str) -> None:
    """A gradient that does not mirror the params is a GradientError saying where."""
    with pytest.raises(GradientError, match=match):
        list(walk_like(template, other))
