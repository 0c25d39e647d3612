"""The flat layout of named tensors."""

from __future__ import annotations

import numpy as np

from gradguard import Layout, Segment


def test_from_tensors_assigns_consecutive_offsets() -> None:
    """Segments follow each other without gaps, in the order given."""
    layout = Layout.from_tensors(
        [
            ("W", (2, 3), np.dtype(np.float32)),
            ("b", (3,), np.dtype(np.float64)),
            ("s", (), np.float16),
        ]
    )
    assert [(s.name, s.offset, s.size) for s in layout] == [("W", 0, 6), ("b", 6, 3), ("s", 9, 1)]
    assert layout.size == 10 and layout.names == ("W", "b", "s")
    assert layout[2].dtype == np.float16


def test_unravel_gives_the_multi_index() -> None:
    """A flat position inside a tensor maps to its index in the tensor's shape."""
    segment = Segment(name="W", shape=(4, 5), dtype=np.float64)
    assert segment.unravel(7) == (1, 2)
    assert Segment(name="s", shape=(), dtype=np.float64).unravel(0) == ()
