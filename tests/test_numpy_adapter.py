"""The NumPy adapter: layout, in-place perturbation and bit-exact restoration of NumPy params."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import gradguard as gg
from gradguard_numpy import NumpyAdapter

DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Keys without "." keep every joined name unique (a "." inside a key is pinned separately).
KEYS = st.text(alphabet="abwxyz_0123", min_size=1, max_size=3)

PROPERTY = settings(max_examples=50, deadline=None)


# -- building random params ----------------------------------------------------------------


@st.composite
def array_leaves(draw: st.DrawFn, *, finite: bool) -> np.ndarray:
    """A float array of random dtype and shape, contiguous, sliced or transposed."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    width = dtype.itemsize * 8
    if finite:
        elements = st.floats(min_value=-10.0, max_value=10.0, width=width)
    else:  # anything a float can hold: -0.0, NaN, infinities, subnormals
        elements = st.floats(width=width)
    kind = draw(st.sampled_from(["plain", "sliced", "transposed"])) if shape else "plain"
    if kind == "sliced":
        base = draw(hnp.arrays(dtype, (2 * shape[0], *shape[1:]), elements=elements))
        return base[::2]
    if kind == "transposed":
        return draw(hnp.arrays(dtype, shape[::-1], elements=elements)).T
    return draw(hnp.arrays(dtype, shape, elements=elements))


def leaves(*, finite: bool) -> st.SearchStrategy[Any]:
    """Arrays (0-d included), Python floats and NumPy float scalars."""
    bounded = st.floats(min_value=-10.0, max_value=10.0)
    python_floats = bounded if finite else st.floats()
    return st.one_of(
        array_leaves(finite=finite),
        python_floats,
        bounded.map(np.float32),
        bounded.map(np.float64),
    )


def trees(*, finite: bool) -> st.SearchStrategy[Any]:
    """Random nestings of dicts (str keys), lists and tuples around float leaves."""
    return st.recursive(
        leaves(finite=finite),
        lambda children: st.one_of(
            st.dictionaries(KEYS, children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=3).map(tuple),
        ),
        max_leaves=8,
    )


# -- looking at params -----------------------------------------------------------------------


def walk(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, leaf)`` in dict insertion order and list/tuple position order."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from walk(value, (*path, key))
    elif isinstance(tree, list | tuple):
        for position, value in enumerate(tree):
            yield from walk(value, (*path, str(position)))
    else:
        yield path, tree


def rebuild(tree: Any, values: Iterator[Any]) -> Any:
    """``tree``'s containers with its leaves replaced by ``values``, in walk order."""
    if isinstance(tree, dict):
        return {key: rebuild(value, values) for key, value in tree.items()}
    if isinstance(tree, list):
        return [rebuild(value, values) for value in tree]
    if isinstance(tree, tuple):
        return tuple(rebuild(value, values) for value in tree)
    return next(values)


def snapshot(tree: Any) -> list[tuple[Any, ...]]:
    """Every leaf's object, type, dtype, shape, flags and bytes (and its base's bytes)."""
    shot = []
    for path, leaf in walk(tree):
        array = np.asarray(leaf)
        base = leaf.base if isinstance(leaf, np.ndarray) else None
        shot.append(
            (
                path,
                leaf,
                type(leaf),
                array.dtype,
                array.shape,
                array.flags.writeable if isinstance(leaf, np.ndarray) else None,
                array.tobytes(),
                base.tobytes() if isinstance(base, np.ndarray) else None,
            )
        )
    return shot


def assert_unchanged(tree: Any, before: list[tuple[Any, ...]]) -> None:
    """The same leaf objects, bit for bit, in the same places."""
    after = snapshot(tree)
    assert len(after) == len(before)
    for (path, leaf, *rest), (path0, leaf0, *rest0) in zip(after, before, strict=True):
        assert path == path0
        assert leaf is leaf0, f"leaf {path} was replaced"
        assert rest == rest0, f"leaf {path} changed"


def quadratic(tree: Any) -> tuple[Callable[[Any], float], Callable[[Any], Any]]:
    """``sum_i c_i * sum(leaf_i**2)`` in float64, and its exact gradient in tree's structure."""
    weights = [0.5 + i for i, _ in enumerate(walk(tree))]

    def loss(p: Any) -> float:
        return sum(
            c * float(np.sum(np.asarray(leaf, dtype=np.float64) ** 2))
            for c, (_, leaf) in zip(weights, walk(p), strict=True)
        )

    def grad(p: Any) -> Any:
        parts = (
            2.0 * c * np.asarray(leaf, dtype=np.float64)
            for c, (_, leaf) in zip(weights, walk(p), strict=True)
        )
        return rebuild(p, parts)

    return loss, grad


def _never(_: Any) -> float:
    raise AssertionError("the loss is not evaluated while only writing through the view")


# -- properties ------------------------------------------------------------------------------


@PROPERTY
@given(tree=trees(finite=False))
def test_layout_follows_the_walk_order_and_nesting(tree: Any) -> None:
    """Segments are named, shaped, typed and placed in walk order ("a.0.b", root "params")."""
    expected = []
    offset = 0
    for path, leaf in walk(tree):
        array = np.asarray(leaf)
        expected.append((".".join(path) or "params", array.shape, array.dtype, offset))
        offset += array.size

    with NumpyAdapter().open(tree, _never, None) as view:
        got = [(s.name, s.shape, s.dtype, s.offset) for s in view.layout]
        assert view.layout.size == offset

    assert got == expected


@PROPERTY
@given(tree=trees(finite=False), seed=st.integers(0, 2**32 - 1))
def test_leaving_the_view_restores_every_leaf_bit_identical(tree: Any, seed: int) -> None:
    """Whatever was written through the view, leaving it puts back the same objects, bit for bit."""
    before = snapshot(tree)
    rng = np.random.default_rng(seed)

    with NumpyAdapter().open(tree, _never, None) as view:
        for s, segment in enumerate(view.layout):
            original = np.asarray(before[s][1], dtype=np.float64).reshape(-1)
            assert np.array_equal(view.original(s), original, equal_nan=True)
            view.write(s, None, rng.uniform(-100.0, 100.0, segment.size))
            index = rng.choice(segment.size, size=rng.integers(0, segment.size + 1), replace=False)
            view.write(s, index.astype(np.intp), rng.uniform(-100.0, 100.0, index.size))

    assert_unchanged(tree, before)


@PROPERTY
@given(tree=trees(finite=True), seed=st.integers(0, 2**32 - 1))
def test_passing_check_leaves_every_leaf_bit_identical(tree: Any, seed: int) -> None:
    """A check with the correct gradient never fails and leaves the params exactly as they were.

    It passes, or says it could not see: a float16 leaf of 0 beside leaves of 5 (the float16
    noise cannot resolve a gradient of the model's scale there), or a lone leaf of 1e-125
    (its gradient, 1e-125, is far below what any step resolves next to J(x +- h) ~ h^2).
    """
    loss, grad = quadratic(tree)
    before = snapshot(tree)

    report = gg.check(loss, tree, grad, seed=seed)

    assert report.failed == (), str(report)
    assert all(p.status.passed or p.status is gg.Status.INCONCLUSIVE for p in report.params)
    assert report.passed or report.inconclusive, str(report)
    assert report.names == tuple(".".join(path) or "params" for path, _ in walk(tree))
    assert_unchanged(tree, before)


@PROPERTY
@given(
    tree=trees(finite=True),
    raise_on=st.integers(1, 10),
    exception=st.sampled_from([RuntimeError, KeyboardInterrupt]),
)
def test_loss_raising_midway_restores_params_and_propagates(
    tree: Any, raise_on: int, exception: type[BaseException]
) -> None:
    """A loss that raises (KeyboardInterrupt too) mid-check leaves params bit-identical."""
    quadratic_loss, grad = quadratic(tree)
    # sample="all" evaluates 2 * size + 2 times; stay within them.
    raise_on = min(raise_on, 2 * sum(np.size(leaf) for _, leaf in walk(tree)) + 2)
    calls = 0

    def loss(p: Any) -> float:
        nonlocal calls
        calls += 1
        if calls == raise_on:
            raise exception("stop here")
        return quadratic_loss(p)

    before = snapshot(tree)

    with pytest.raises(exception, match="stop here"):
        gg.check(loss, tree, grad, sample="all", seed=0)

    assert calls == raise_on
    assert_unchanged(tree, before)


# -- examples --------------------------------------------------------------------------------


def test_nested_names_join_keys_and_positions() -> None:
    """Dict keys and list/tuple positions are joined with "." in walk order."""
    params = {
        "W": np.zeros((2, 3)),
        "layers": [{"b": np.zeros(3, dtype=np.float32)}, (1.0, np.zeros((), np.float16))],
    }

    with NumpyAdapter().open(params, _never, None) as view:
        layout = view.layout

    assert layout.names == ("W", "layers.0.b", "layers.1.0", "layers.1.1")
    assert [s.offset for s in layout] == [0, 6, 9, 10]
    assert [str(s.dtype) for s in layout] == ["float64", "float32", "float64", "float16"]


def test_seed_scalar_example_passes() -> None:
    """The seed's J(theta) = theta * x (theta 4, x 3) passes as one tensor "params" of shape ()."""
    x = 3.0

    report = gg.check(lambda theta: theta * x, 4.0, lambda theta: x)

    assert report.passed
    assert report.names == ("params",)
    assert report["params"].shape == ()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_float_dtype_passes_with_correct_gradient(dtype: np.dtype[Any]) -> None:
    """float16, float32 and float64 params pass with a correct gradient of a loss in that dtype."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((5, 3)).astype(dtype)
    Y = rng.standard_normal((5, 4)).astype(dtype)
    params = {"W": rng.standard_normal((3, 4)).astype(dtype), "b": np.zeros(4, dtype)}
    before = snapshot(params)

    def loss(p: dict[str, np.ndarray]) -> np.ndarray:
        residual = X @ p["W"] + p["b"] - Y
        return 0.5 * np.sum(residual * residual)

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        residual = X @ p["W"] + p["b"] - Y
        return {"W": X.T @ residual, "b": residual.sum(axis=0)}

    assert loss(params).dtype == dtype
    report = gg.check(loss, params, grad, seed=0)

    assert report.passed, str(report)
    assert report.dtype == str(dtype)
    assert [p.dtype for p in report.params] == [str(dtype)] * 2
    assert_unchanged(params, before)


def test_global_rng_dropout_loss_passes_and_global_state_is_put_back() -> None:
    """A dropout mask drawn from np.random inside loss and grad is the same mask every time."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 4))
    params = {"W": rng.standard_normal((4, 5))}

    def loss(p: dict[str, np.ndarray]) -> float:
        mask = np.random.rand(6, 5) < 0.5
        return float(np.sum(np.tanh(X @ p["W"]) * mask))

    def grad(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = np.random.rand(6, 5) < 0.5
        return {"W": X.T @ ((1.0 - np.tanh(X @ p["W"]) ** 2) * mask)}

    np.random.seed(12345)
    np.random.rand(3)  # somewhere in the middle of the stream
    state = np.random.get_state()

    report = gg.check(loss, params, grad, seed=0)

    assert report.passed, str(report)
    after = np.random.get_state()
    assert after[0] == state[0]
    assert np.array_equal(after[1], state[1])
    assert after[2:] == state[2:]


def test_closure_loss_sees_in_place_perturbations() -> None:
    """A loss that reads a writable float64 array from a closure sees the perturbed values."""
    W = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    before = snapshot({"W": W})

    def loss(_: Any) -> float:
        return float(np.sum(np.sin(W)))

    report = gg.check(loss, {"W": W}, lambda _: {"W": np.cos(W)}, seed=0)

    assert report.passed, str(report)
    assert_unchanged({"W": W}, before)


def test_read_only_arrays_are_checked_and_unchanged() -> None:
    """Arrays with writeable=False are checked through a copy and stay read-only and unchanged."""
    W = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    b = np.array([0.5, -0.25], dtype=np.float32)
    W.flags.writeable = False
    b.flags.writeable = False
    params = {"W": W, "b": b}
    before = snapshot(params)

    def loss(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(p["W"] ** 3) + np.sum(p["b"] ** 2))

    report = gg.check(loss, params, lambda p: {"W": 3.0 * p["W"] ** 2, "b": 2.0 * p["b"]}, seed=0)

    assert report.passed, str(report)
    assert not W.flags.writeable
    assert not b.flags.writeable
    assert_unchanged(params, before)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_coordinate_probes_perturb_one_element_at_a_time(k: int) -> None:
    """With directions=0 each evaluation sees at most one element away from its original value."""
    rng = np.random.default_rng(11)
    params = {"W": rng.standard_normal((4, 5)), "b": rng.standard_normal(3)}
    originals = {name: value.copy() for name, value in params.items()}
    changed: list[int] = []

    def loss(p: dict[str, np.ndarray]) -> float:
        changed.append(sum(int(np.sum(p[n] != originals[n])) for n in originals))
        return float(np.sum(p["W"] ** 2) + np.sum(p["b"] ** 2))

    report = gg.check(
        loss, params, lambda p: {n: 2.0 * v for n, v in p.items()}, sample=k, directions=0, seed=1
    )

    assert report.passed, str(report)
    assert set(changed) == {0, 1}
    assert changed.count(1) == 2 * k


def test_dotted_keys_do_not_collide_with_nested_names() -> None:
    """A key holding "." next to a nested path of the same name is refused, naming both."""
    params = {"a": {"b": np.ones(2)}, "a.b": np.full(3, 2.0)}
    before = snapshot(params)

    def loss(p: dict[str, Any]) -> float:
        return float(np.sum(p["a"]["b"] ** 2) + np.sum(p["a.b"] ** 2))

    def grad(p: dict[str, Any]) -> dict[str, Any]:
        return {"a": {"b": 2.0 * p["a"]["b"]}, "a.b": 2.0 * p["a.b"]}

    with pytest.raises(gg.InvalidParamsError, match=r"both named 'a\.b'.*\['a', 'b'\].*\['a\.b'\]"):
        gg.check(loss, params, grad, seed=0)
    assert_unchanged(params, before)
    with pytest.raises(gg.InvalidParamsError, match="both named '1'"):
        gg.check(loss, {1: np.ones(2), "1": np.ones(2)}, grad, seed=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda w: {"a": w, "b": w},  # the same array twice
        lambda w: {"a": w, "b": w[1:]},  # a view of another entry
        lambda w: [w[:, 0], w[:2]],  # a column and a block of rows of one buffer
    ],
    ids=["twice", "view", "views-of-one-buffer"],
)
def test_params_sharing_memory_are_refused(make: Callable[[Any], Any]) -> None:
    """Entries that share memory would move together and both fail falsely: refused up front."""
    w = np.arange(6.0).reshape(3, 2)
    before = w.copy()
    with pytest.raises(gg.InvalidParamsError, match=r"share memory.*pass each array once"):
        gg.check(lambda p: 0.0, make(w), lambda p: p)
    assert np.array_equal(w, before)


def test_interleaved_views_that_share_no_element_are_checked() -> None:
    """Two strided views of one buffer with no element in common are independent tensors."""
    w = np.arange(1.0, 7.0).reshape(3, 2)
    report = gg.check(
        lambda p: float(np.sum(p[0] ** 2) + np.sum(p[1] ** 3)),
        [w[:, 0], w[:, 1]],
        lambda p: [2 * p[0], 3 * p[1] ** 2],
        seed=0,
    )
    assert report.passed and [p.name for p in report.params] == ["0", "1"]
