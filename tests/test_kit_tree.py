"""Walking nested params containers, naming leaves, matching a gradient's structure."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from gradguard import GradientError, InvalidParamsError
from gradguard.kit.tree import (
    holds_any,
    holds_only,
    path_name,
    rebuild,
    refuse_duplicate_names,
    walk,
    walk_like,
)


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


class Box:
    """A framework's own container (a pytree node, a layer): children by attribute."""

    def __init__(self, **children: object) -> None:
        self.children = children


def expand_box(obj: object) -> list[tuple[str, object]] | None:
    return list(obj.children.items()) if isinstance(obj, Box) else None


def test_a_framework_plugs_its_containers_into_walk() -> None:
    """walk(expand=...) descends into the framework's nodes and names their keys."""
    tree = {"enc": Box(w=1, b=[2, 3]), "out": 4}
    assert [(path_name(p), leaf) for p, leaf in walk(tree, expand=expand_box)] == [
        ("enc.w", 1),
        ("enc.b.0", 2),
        ("enc.b.1", 3),
        ("out", 4),
    ]
    assert isinstance(next(leaf for _, leaf in walk(tree)), Box)  # without expand: a leaf


def test_walk_like_mirrors_a_frameworks_containers() -> None:
    """A gradient in the same custom containers is walked in the params' order; another
    structure is refused, naming where."""
    params = Box(w=1.0, b=2.0)
    assert list(walk_like(params, Box(w=10.0, b=20.0), expand=expand_box)) == [
        (("w",), 10.0),
        (("b",), 20.0),
    ]
    with pytest.raises(GradientError, match="params there is a Box"):
        list(walk_like(params, {"w": 1.0, "b": 2.0}, expand=expand_box))


def test_claims_walk_the_same_way() -> None:
    """holds_any / holds_only answer "is this mine?" with the same walk, and never raise."""
    assert holds_any([1, "x"], lambda leaf: leaf == "x")
    assert not holds_only([1, "x"], lambda leaf: isinstance(leaf, int))
    assert holds_only(Box(a=1), lambda leaf: isinstance(leaf, int), expand=expand_box)
    looped: list[object] = []
    looped.append(looped)
    assert not holds_any(looped, lambda leaf: True)
    with pytest.raises(InvalidParamsError, match="holds itself"):
        list(walk(looped))


def test_names_that_collide_are_refused() -> None:
    """Two paths that print alike ('a.b') are refused, naming both paths."""
    refuse_duplicate_names([("a",), ("b",)])
    with pytest.raises(InvalidParamsError, match=r"both named 'a\.b'"):
        refuse_duplicate_names([("a.b",), ("a", "b")])
