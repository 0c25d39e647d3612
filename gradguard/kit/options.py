"""Options a check carries with its params, for the adapters that evaluate in float64 shadows.

``check(loss, params)`` has no adapter options, so an adapter that can evaluate its loss in
more than one precision accepts its params wrapped with them (``TFParams(model,
precision="native")``, ``JaxParams(params, precision="float64")``). The wrapper's fields, their
validation and the error wording live here once; each adapter subclasses
:class:`PrecisionParams` with a docstring of its own (what "auto" decides in that framework).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from gradguard.errors import SettingsError

__all__ = ["PRECISIONS", "Precision", "PrecisionParams", "check_precision"]

Precision = Literal["auto", "float64", "native"]
"""How the loss is evaluated: ``"auto"`` (a float64 shadow where it can be had, else the
params' own dtype), ``"float64"`` (a shadow, or an error), ``"native"`` (the params' dtype)."""

PRECISIONS: tuple[str, ...] = ("auto", "float64", "native")


def check_precision(_: object, __: attrs.Attribute[str], value: object) -> None:
    """An ``attrs`` validator: ``value`` is one of :data:`PRECISIONS`.

    Raises:
        SettingsError: it is not.
    """
    if value not in PRECISIONS:
        raise SettingsError(
            f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {value!r}"
        )


@attrs.frozen
class PrecisionParams:
    """Params with the precision their loss is evaluated in (subclassed per adapter).

    Attributes:
        params: What to check, as the adapter accepts it; the loss still receives it.
        precision: One of :data:`PRECISIONS`.
    """

    params: Any
    precision: Precision = attrs.field(default="auto", validator=check_precision)
