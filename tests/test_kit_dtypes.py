"""Dtype helpers and the one TF32 switch API every adapter implements."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from gradguard.kit.dtypes import (
    Tf32Switch,
    bfloat16,
    carried_precision,
    float64_flat,
    judged_dtype,
    least_precise,
    precision_bits,
)


def test_least_precise_orders_by_width() -> None:
    """float16 < float32 < float64, whatever the order given; nothing given is an error."""
    assert least_precise(np.float64, "float32", np.dtype(np.float16)) == np.float16
    assert least_precise(np.float64) == np.float64
    assert precision_bits(np.float32) == 32
    with pytest.raises(ValueError, match="at least one"):
        least_precise()


def test_float64_flat_is_read_only_and_copies_only_when_needed() -> None:
    """float64 originals are a read-only view; others a float64 copy (exact)."""
    saved = np.arange(6.0).reshape(2, 3)
    flat = float64_flat(saved)
    assert flat.base is not None and np.shares_memory(flat, saved) and not flat.flags.writeable
    assert saved.flags.writeable
    low = float64_flat(np.array([0.1], np.float32))
    assert low.dtype == np.float64 and low[0] == np.float32(0.1) and not low.flags.writeable


class _Flags(Tf32Switch):
    """A framework with two paths, kept in a dict (the kit's part is what is tested)."""

    state: ClassVar[dict[str, bool]] = {"matmul": True, "cudnn": False}
    failing = False

    def _enabled(self) -> tuple[str, ...]:
        return tuple(k for k, on in self.state.items() if on)

    def _disable(self) -> None:
        if self.failing:
            self.state["matmul"] = False
            raise KeyboardInterrupt
        for path in self.was_on:
            self.state[path] = False

    def _put_back(self) -> None:
        for path in self.was_on:
            self.state[path] = True


def test_switch_turns_off_restores_once_and_words_the_note() -> None:
    """off() saves and disables, restore() is idempotent, note() names what was on."""
    switch = _Flags.off()
    assert switch.was_on == ("matmul",) and _Flags.state == {"matmul": False, "cudnn": False}
    assert (
        switch.note(gpu=True) == "disabled during the check, then re-enabled (it was on for matmul)"
    )
    assert switch.note(gpu=False) is None
    switch.restore()
    _Flags.state["matmul"] = False  # a later change by the user is not undone by a 2nd restore
    switch.restore()
    assert _Flags.state == {"matmul": False, "cudnn": False}
    already = _Flags.off()
    assert already.was_on == () and already.note(gpu=True) == "already disabled; left disabled"


def test_switch_puts_back_what_it_changed_when_switching_off_is_interrupted() -> None:
    """An interrupt halfway through off() restores the settings before it propagates."""
    _Flags.state = {"matmul": True, "cudnn": True}
    _Flags.failing = True
    try:
        with pytest.raises(KeyboardInterrupt):
            _Flags.off()
        assert _Flags.state == {"matmul": True, "cudnn": True}
    finally:
        _Flags.failing = False


def test_run_all_runs_every_restoration_step_and_returns_the_first_failure() -> None:
    """A step that raises (even KeyboardInterrupt) does not stop the later ones."""
    from gradguard.kit.restoring import run_all

    done: list[int] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    def broken() -> None:
        raise ValueError("second")

    failure = run_all([lambda: done.append(1), interrupted, broken, lambda: done.append(4)])
    assert done == [1, 4] and isinstance(failure, KeyboardInterrupt)
    assert run_all([lambda: done.append(5)]) is None


def test_bfloat16_has_one_mapping_for_every_adapter() -> None:
    """judged_dtype("bfloat16") (TensorFlow, JAX) is ml_dtypes' bfloat16, the dtype the
    PyTorch adapter uses: judged with bfloat16's own epsilon, not float16's, and the notes say
    so; other names are NumPy's."""
    import ml_dtypes

    notes: dict[str, str | int | float | bool | None] = {}
    judged = judged_dtype("bfloat16", notes)
    assert judged == bfloat16() == np.dtype(ml_dtypes.bfloat16)
    assert np.finfo(judged).eps == 2.0**-7
    assert "bfloat16's step and tolerance" in str(notes["loss_precision"])
    assert judged_dtype("float16") == np.float16
    assert least_precise(np.float16, judged) == judged


def test_carried_precision_reads_the_values_not_the_dtype() -> None:
    """A float64 vector of float32 numbers carries float32 precision, even with one part
    changed in float64 afterwards; a float64 computation's values, round values (gradients
    of 1.0, 0.25) and too few values carry float64."""
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(1000)
    single = exact.astype(np.float32).astype(np.float64)
    assert carried_precision(single) == np.float32
    changed = single.copy()
    changed[:100] *= 1.001  # a planted 0.1% error, made in float64
    assert carried_precision(changed) == np.float32
    assert carried_precision(exact) == np.float64
    assert carried_precision(np.array([1.0, 0.25, -2.0, 0.0] * 100)) == np.float64
    assert carried_precision(single[:7]) == np.float64
    assert carried_precision(np.array([1e300, -1e300] * 10)) == np.float64
