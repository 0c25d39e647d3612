"""The keys of ``FlatView.notes``: what every adapter may tell the reader of a report.

A report's ``notes`` are free-form facts about how the check ran, but the same fact must
have the same key whatever the framework, so that a log reader (or a test) can rely on it.
Adapters use these constants; a key of their own is fine for a fact only they have.
"""

from __future__ import annotations

__all__ = [
    "EVALUATION",
    "GRADIENT",
    "LOSS_PRECISION",
    "NO_GRADIENT",
    "STATE_RESET",
    "TF32",
    "TRACE",
    "TRACE_S",
    "WRITES",
]

EVALUATION = "evaluation"
"""How the loss was evaluated: in place, a float64 shadow or trace, compiled or eager, and why
it is not the default way when it is not (``"float64 shadow copy"``)."""

GRADIENT = "gradient"
"""Which analytic gradient is under test when there are two (PyTorch: the model's native
dtype, or the float64 shadow's), and how far apart they are."""

NO_GRADIENT = "no_gradient"
"""The tensors autodiff gave no gradient (not connected to the loss), comma-separated; each
counts as a zero gradient."""

TF32 = "tf32"
"""What the check did with TF32 on a GPU (:class:`gradguard.kit.dtypes.Tf32Switch` words it)."""

WRITES = "writes"
"""What the evaluations write into the user's tensors, if anything."""

TRACE = "trace"
"""Whether a compiled evaluation was traced afresh or reused from an earlier check."""

TRACE_S = "trace_s"
"""Seconds spent compiling (tracing) the evaluations during this check."""

STATE_RESET = "state_reset"
"""State outside the checked tensors that the loss writes and the view puts back after every
evaluation (counters, random generators, running statistics)."""

LOSS_PRECISION = "loss_precision"
"""A loss computed in a dtype NumPy lacks (bfloat16), and how it is judged."""
