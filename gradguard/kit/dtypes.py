"""Dtype helpers every adapter needs: precision order, float64 originals, TF32 switched off.

Framework-free: an adapter maps its own dtypes to NumPy dtypes (bfloat16, which NumPy lacks,
to :func:`bfloat16`, ml_dtypes' NumPy dtype, imported on first use, never at import) and uses
these for the rest.
"""

from __future__ import annotations

import abc
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from gradguard.kit.notes import LOSS_PRECISION

__all__ = [
    "Tf32Switch",
    "bfloat16",
    "carried_precision",
    "float64_flat",
    "judged_dtype",
    "least_precise",
    "precision_bits",
]

_BITS: dict[np.dtype[Any], int] = {}
_EPS: dict[np.dtype[Any], float] = {}


# A float64 vector carries float32 precision when every value is a float32 number and at least
# this many are not float16 numbers too (a float64 gradient of round values, 1.0 or 0.25,
# is a float32 number by accident; a float64 value that is a float32 one by chance: 2**-29).
_FINE_VALUES = 8
_CARRIED_SHARE = 0.5


def carried_precision(values: npt.NDArray[np.float64]) -> np.dtype[Any]:
    """The precision a float64 vector's values carry: float32 or float64.

    A gradient computed in float32 and handed over as float64 (a PyTorch ``grad`` callable
    that clones ``p.grad`` inside the float64 shadow, a float32 NumPy backprop cast up) is
    float64 by its dtype and float32 by its values; judged as float64, its float32 rounding
    reads as a disagreement. Only values decide: of the values finer than float16 (round
    values are float32 numbers in any dtype), at least 8, and most of them float32 numbers.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32)
        fine = single.astype(np.float16).astype(np.float32) != single
        exact = single.astype(np.float64) == values
    fine_count = int(np.count_nonzero(fine))
    if fine_count < _FINE_VALUES:
        return np.dtype(np.float64)
    # Most, not all: a planted or hand-made change in float64 (one tensor scaled by 1.001 after
    # the float32 backward) leaves the rest float32 numbers; a float64 gradient has ~none.
    carried = int(np.count_nonzero(fine & exact)) >= _CARRIED_SHARE * fine_count
    return np.dtype(np.float32 if carried else np.float64)


def precision_bits(dtype: npt.DTypeLike) -> int:
    """The width of a floating dtype in bits (16, 32, 64): its rank in precision."""
    key = np.dtype(dtype)
    bits = _BITS.get(key)
    if bits is None:  # np.finfo is slow; a check asks the same few dtypes many times
        bits = _BITS[key] = int(np.finfo(key).bits)
    return bits


def least_precise(*dtypes: npt.DTypeLike) -> np.dtype[Any]:
    """The least precise of some floating dtypes: what a computation mixing them is worth.

    Raises:
        ValueError: no dtype was given.
    """
    if not dtypes:
        raise ValueError("least_precise() needs at least one dtype")
    # By machine epsilon, not width: bfloat16 and float16 are both 16 bits wide.
    return max((np.dtype(d) for d in dtypes), key=_eps)


def _eps(dtype: np.dtype[Any]) -> float:
    eps = _EPS.get(dtype)
    if eps is None:  # np.finfo is slow; a check asks the same few dtypes many times
        eps = _EPS[dtype] = float(np.finfo(dtype).eps)
    return eps


def bfloat16() -> np.dtype[Any]:
    """bfloat16 as the engine judges it: ``ml_dtypes.bfloat16``, a NumPy dtype ``np.finfo``
    knows (epsilon 7.8e-3), so a bfloat16 loss or gradient gets bfloat16's own step, tolerance
    and noise model. ml_dtypes is imported here, on first use, never by ``import gradguard``;
    every framework with bfloat16 (TensorFlow, JAX, the ``torch`` extra) installs it.
    """
    import ml_dtypes  # only a framework with bfloat16 gets here

    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def judged_dtype(
    name: str, notes: dict[str, str | int | float | bool | None] | None = None
) -> np.dtype[Any]:
    """A framework's floating dtype, by name, as the engine judges a loss computed in it.

    bfloat16, which NumPy lacks, is :func:`bfloat16` (ml_dtypes'), for every adapter alike;
    ``notes`` (a view's notes) then say so under :data:`gradguard.kit.notes.LOSS_PRECISION`.

    Raises:
        TypeError: NumPy does not know the name.
    """
    if name != "bfloat16":
        return np.dtype(name)
    if notes is not None:
        notes[LOSS_PRECISION] = "bfloat16 arithmetic, judged with bfloat16's step and tolerance"
    return bfloat16()


def float64_flat(saved: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """A tensor's saved original as the engine reads it: flat, float64, read-only.

    A float64 original is returned as a read-only view (no copy); any other dtype is
    converted (exactly: float16 and float32 values are all float64 values).
    """
    if saved.dtype == np.float64:
        view: npt.NDArray[np.float64] = saved.reshape(-1).view()
    else:
        view = saved.reshape(-1).astype(np.float64)
    view.flags.writeable = False  # the engine must not scribble on the saved original
    return view


class Tf32Switch(abc.ABC):
    """TF32 switched off for a check and put back exactly, one API for every framework.

    On Ampere and later GPUs, float32 matmuls and convolutions may run in TF32 (a 10-bit
    mantissa), which makes float32 central differences meaningless. A view calls
    :meth:`off` when it opens and :meth:`restore` when it closes (idempotent), and puts
    :meth:`note` in its notes under :data:`gradguard.kit.notes.TF32`.

    A framework implements the three private methods; the saving, the idempotence and the
    report's wording live here once.

    Attributes:
        was_on: The paths that had TF32 on before the check (``("matmul", "cudnn")``,
            ``("all",)`` for a framework with a single switch), empty when none had.
    """

    def __init__(self) -> None:
        self.was_on: tuple[str, ...] = self._enabled()
        self._active = False

    @classmethod
    def off(cls) -> Self:
        """Save the current settings and switch TF32 off; on failure nothing stays changed."""
        switch = cls()
        switch._active = True
        try:
            if switch.was_on:
                switch._disable()
        except BaseException:
            switch.restore()
            raise
        return switch

    def restore(self) -> None:
        """Put the saved settings back, once (later calls do nothing)."""
        if not self._active:
            return
        self._active = False
        if self.was_on:
            self._put_back()

    def note(self, gpu: bool) -> str | None:
        """What the report says about TF32; ``None`` without a GPU (nothing to switch)."""
        if not gpu:
            return None
        if not self.was_on:
            return "already disabled; left disabled"
        paths = "" if self.was_on == ("all",) else f" (it was on for {' and '.join(self.was_on)})"
        return f"disabled during the check, then re-enabled{paths}"

    @abc.abstractmethod
    def _enabled(self) -> tuple[str, ...]:
        """Read the settings (saving whatever :meth:`_put_back` needs); the paths that are on."""

    @abc.abstractmethod
    def _disable(self) -> None:
        """Switch TF32 off on every path in :attr:`was_on`."""

    @abc.abstractmethod
    def _put_back(self) -> None:
        """Put the settings saved by :meth:`_enabled` back, through the API they were set with."""
