"""Options for a JAX check, carried with the params (``check`` has no adapter options)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from gradguard.errors import SettingsError

__all__ = ["PRECISIONS", "JaxParams", "Precision"]

Precision = Literal["auto", "float64", "native"]
PRECISIONS: tuple[str, ...] = ("auto", "float64", "native")


def _check_precision(_: object, __: attrs.Attribute[str], value: object) -> None:
    if value not in PRECISIONS:
        raise SettingsError(
            f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {value!r}"
        )


@attrs.frozen
class JaxParams:
    """JAX params with options for how the check evaluates the loss.

    ``gg.check(loss, JaxParams(params, precision="native"))`` checks ``params`` exactly as
    ``gg.check(loss, params)`` would, with the options below; the loss still receives
    ``params`` (or the model).

    Attributes:
        params: A pytree of JAX arrays, a Flax NNX module or an Equinox module.
        precision: How the loss is evaluated (``docs/jax.md``, "Numerics"):

            - ``"auto"`` (default): ``"float64"`` when ``grad`` is ``None`` and the loss
              computes entirely in float64 once its inputs are float64, else ``"native"``;
              ``report.notes["evaluation"]`` says which and why.
            - ``"float64"``: a float64 shadow (x64 on for the check's own computations
              only): loss, finite differences and ``jax.grad`` in float64; an error if the
              loss still computes in a lower precision.
            - ``"native"``: evaluate in the params' own dtype.
    """

    params: Any
    precision: Precision = attrs.field(default="auto", validator=_check_precision)
