"""TF32 switched off for the duration of a check, and put back as it was.

On Ampere and later GPUs, TensorFlow runs float32 matmuls and convolutions in TF32 by
default (a 10-bit mantissa), which makes float32 central differences meaningless. The
setting is one process-wide flag, ``tf.config.experimental.enable_tensor_float_32_execution``.
The view switches it off when it opens and restores it when it closes, whatever happened in
between (the saving, the idempotence and the report's words are the kit's
:class:`gradguard.kit.dtypes.Tf32Switch`).
"""

from __future__ import annotations

import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

from gradguard.kit import dtypes

__all__ = ["Tf32Switch", "gpu_visible"]


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (without one, the TF32 flag changes nothing)."""
    return bool(tf.config.list_physical_devices("GPU"))


class Tf32Switch(dtypes.Tf32Switch):
    """TensorFlow's single TF32 flag (``was_on`` is ``("all",)`` when it was on)."""

    def _enabled(self) -> tuple[str, ...]:
        return ("all",) if tf.config.experimental.tensor_float_32_execution_enabled() else ()

    def _disable(self) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(False)

    def _put_back(self) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(True)
