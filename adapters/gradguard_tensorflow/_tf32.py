"""TF32 switched off for the duration of a check, and put back as it was.

On Ampere and later GPUs, TensorFlow runs float32 matmuls and convolutions in TF32 by
default (a 10-bit mantissa), which makes float32 central differences meaningless. The
setting is one process-wide flag, ``tf.config.experimental.enable_tensor_float_32_execution``.
A check turns it off when its view opens and restores it when the view closes, whatever
happened in between; the report's ``notes`` say so when a GPU is visible (on a CPU the flag
changes nothing).
"""

from __future__ import annotations

import tensorflow as tf  # type: ignore[import-untyped]  # TensorFlow ships no type information

__all__ = ["Tf32Switch"]


class Tf32Switch:
    """Turns TF32 off now; :meth:`restore` puts it back (idempotent)."""

    def __init__(self) -> None:
        self.was_on = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        self._restored = False
        if self.was_on:
            tf.config.experimental.enable_tensor_float_32_execution(False)

    def restore(self) -> None:
        """Put the setting back as it was when the switch was made."""
        if self.was_on and not self._restored:
            tf.config.experimental.enable_tensor_float_32_execution(True)
        self._restored = True

    @property
    def note(self) -> str | None:
        """What the report says about TF32, or ``None`` where it does not apply (no GPU)."""
        if not tf.config.list_physical_devices("GPU"):
            return None
        if self.was_on:
            return "disabled during the check, then re-enabled"
        return "already disabled; left disabled"
