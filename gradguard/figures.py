"""A check's figures for the dashboards users already watch (TensorBoard, W&B, MLflow).

The training-loop front doors put them where each framework's loggers look: the Hugging Face
Trainer's own logs (``trainer.log``), Lightning's ``pl_module.log``, Keras' epoch ``logs``. The
keys are shaped like the gradient-health metrics users know (Lightning's
``grad_2.0_norm/<param>``), so they group under one ``gradcheck`` section of a dashboard:

- ``gradcheck/difference``: the seed's relative difference over the whole check;
- ``gradcheck/failed``: ``1.0`` when the check did not pass (a failed, inconclusive or
  nondeterministic check, as every failure policy counts it), else ``0.0``;
- ``gradcheck/difference/<tensor>``: each tensor's own difference, for models of at most
  :data:`PER_TENSOR_LIMIT` checked tensors (a large model would flood the dashboard).

A figure that is not a finite number (a tensor the check could not judge) is left out:
dashboards plot ``NaN`` as a gap or refuse it, and the JSON-lines record says why.
``docs/log-schema.md`` documents the keys.
"""

from __future__ import annotations

import math

from gradguard.results import CheckReport

__all__ = ["PER_TENSOR_LIMIT", "PREFIX", "figures"]

PREFIX = "gradcheck"
PER_TENSOR_LIMIT = 32
"""Per-tensor figures are given for checks of at most this many tensors."""


def figures(report: CheckReport, *, per_tensor_limit: int = PER_TENSOR_LIMIT) -> dict[str, float]:
    """The dashboard figures of one check, as plain floats keyed ``gradcheck/...``.

    Args:
        report: The check's report.
        per_tensor_limit: Give ``gradcheck/difference/<tensor>`` only when the check covered at
            most this many tensors.

    Returns:
        ``{"gradcheck/difference": ..., "gradcheck/failed": 0.0 or 1.0, ...}`` in the order
        a dashboard should list them; non-finite values left out.
    """
    out: dict[str, float] = {}
    if math.isfinite(report.difference):
        out[f"{PREFIX}/difference"] = float(report.difference)
    out[f"{PREFIX}/failed"] = 0.0 if report.passed else 1.0
    if len(report.params) <= per_tensor_limit:
        for param in report.params:
            if math.isfinite(param.difference):
                out[f"{PREFIX}/difference/{param.name}"] = float(param.difference)
    return out
