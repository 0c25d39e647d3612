"""One gradient validator for every adapter: structure, missing, shape, finiteness."""

from __future__ import annotations

import numpy as np
import pytest

from gradguard import GradientError
from gradguard.engine.layout import Layout
from gradguard.kit.gradients import check_finite, flatten_gradient, leaves_by_name

LAYOUT = Layout.from_tensors([("W", (2, 3), np.float32), ("b", (3,), np.float64)])


def test_flatten_concatenates_in_layout_order_as_float64() -> None:
    """Each tensor's gradient lands in its segment, flat, float64, whatever its dtype."""
    flat = flatten_gradient(LAYOUT, [np.ones((2, 3), np.float32), [1.0, 2.0, 3.0]])
    assert flat.dtype == np.float64 and flat.tolist() == [1.0] * 6 + [1.0, 2.0, 3.0]


def test_to_array_converts_framework_leaves() -> None:
    """An adapter's converter sees each leaf; its TypeError means 'not an array'."""

    class Tensor:
        def __init__(self, values: list[float]) -> None:
            self.values = values

    def to_array(leaf: object) -> object:
        if isinstance(leaf, Tensor):
            return np.reshape(leaf.values, (2, 3))
        raise TypeError("not mine")

    flat = flatten_gradient(
        LAYOUT,
        [Tensor([0.0] * 6), None],
        to_array=to_array,
        missing="zero",
    )
    assert flat.tolist() == [0.0] * 9
    with pytest.raises(GradientError, match="for 'b' is a str, not an array of shape \\(3,\\)"):
        flatten_gradient(LAYOUT, [Tensor([0.0] * 6), "abc"], to_array=to_array)


@pytest.mark.parametrize(
    ("leaves", "words"),
    [
        ([None, np.zeros(3)], "grad for 'W' is None; give an array of shape (2, 3)"),
        (
            [np.zeros((3, 2)), np.zeros(3)],
            "'W' has shape (3, 2) but the parameter has shape (2, 3)",
        ),
        ([np.zeros((2, 3)), {"x": 1}], "'b' is a dict, not an array"),
        ([np.zeros((2, 3))], "gives 1 tensor(s) but 2 are checked (W, b)"),
    ],
)
def test_each_problem_has_one_message_naming_the_tensor(leaves: list[object], words: str) -> None:
    """Missing, mis-shaped, non-array and miscounted gradients are refused with the fix."""
    with pytest.raises(GradientError) as caught:
        flatten_gradient(LAYOUT, leaves, source="grad")
    assert words in str(caught.value)


def test_non_finite_values_name_the_tensor_and_the_first_bad_element() -> None:
    """A NaN or an infinity is refused with the tensor, the count and the first position."""
    g = np.zeros((2, 3))
    g[1, 2] = np.inf
    g[0, 1] = np.nan
    with pytest.raises(
        GradientError,
        match=r"'W' \(shape \(2, 3\)\) holds 2 non-finite value\(s\), the first at \[0, 1\]",
    ):
        flatten_gradient(LAYOUT, [g, np.zeros(3)])
    flat = np.zeros(LAYOUT.size)
    flat[-1] = np.nan
    with pytest.raises(GradientError, match=r"'b'.*the first at \[2\]"):
        check_finite(LAYOUT, flat)


def test_leaves_by_name_accepts_a_dict_a_list_or_a_lone_leaf() -> None:
    """By name (nested dicts join with '.'), in order (nested lists flatten), or alone."""
    w, b = np.ones((2, 3)), np.ones(3)
    assert leaves_by_name({"b": b, "W": w}, ["W", "b"]) == [w, b]
    assert leaves_by_name({"layer": {"W": w}}, ["layer.W"]) == [w]
    assert leaves_by_name([[w], b], ["W", "b"]) == [w, b]
    assert leaves_by_name(w, ["W"]) == [w]
    assert leaves_by_name({"W": w, "alias": w}, ["W"], ignored={"alias"}) == [w]


@pytest.mark.parametrize(
    ("grad", "words"),
    [
        ({"W": 1}, "missing ['b']"),
        ({"W": 1, "b": 2, "c": 3}, "unknown names ['c']"),
        ([1], "list of 1 tensor(s), but 2 parameters are checked (W, b)"),
        (np.ones(3), "a single ndarray, but 2 parameters are checked"),
    ],
)
def test_leaves_by_name_refuses_what_does_not_match(grad: object, words: str) -> None:
    """Missing and unknown names, a wrong count, a lone leaf for several tensors: refused."""
    with pytest.raises(GradientError) as caught:
        leaves_by_name(grad, ["W", "b"], order="model.weights")
    assert words in str(caught.value)
