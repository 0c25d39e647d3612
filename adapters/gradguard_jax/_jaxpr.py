"""What a traced loss computes from the checked parameters: dependence and precision.

A forward data-flow pass over the loss's jaxpr marks every value computed from a checked
parameter. Two questions are answered from it, before any probe is spent:

- does the loss depend on the parameters at all (a loss that calls a model held in a
  closure instead of the one it receives does not, and every probe would read zero)?
- in which floating dtypes are those values computed? A float64 shadow is only worth its
  name when nothing on the path from the parameters to the loss is float32 or lower (a layer
  built with ``dtype=jnp.float32`` casts its inputs back down).

Values that do not depend on the parameters (dropout masks drawn from a key, constants) are
left out: their precision does not limit the finite differences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import jax.extend.core as jcore
import numpy as np

__all__ = ["Flow", "analyze"]


@attrs.frozen
class Flow:
    """What the data-flow pass found.

    Attributes:
        depends: Whether the loss's value depends on some checked parameter.
        dtypes: The floating dtypes of the values computed from the parameters, by name,
            with one primitive that produced each (for the report's notes).
    """

    depends: bool
    dtypes: dict[str, str]


def _subjaxprs(params: dict[str, Any]) -> Iterator[jcore.Jaxpr]:
    for value in params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, jcore.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jcore.Jaxpr):
                yield item


def _float_name(aval: Any) -> str | None:
    dtype = getattr(aval, "dtype", None)
    if dtype is None:
        return None
    try:
        if not np.issubdtype(dtype, np.floating) and "float" not in str(dtype):
            return None
    except TypeError:  # extended dtypes (PRNG keys)
        return None
    return str(dtype)


def _walk(jaxpr: jcore.Jaxpr, tainted_in: Sequence[bool], found: dict[str, str]) -> list[bool]:
    tainted: set[Any] = set()
    for var, flag in zip(jaxpr.invars, tainted_in, strict=True):
        if flag:
            tainted.add(var)
    for eqn in jaxpr.eqns:
        inputs = [not isinstance(v, jcore.Literal) and v in tainted for v in eqn.invars]
        if not any(inputs):
            continue
        for sub in _subjaxprs(eqn.params):
            if len(sub.invars) == len(inputs):
                _walk(sub, inputs, found)
            else:  # the mapping of operands is primitive-specific: assume all depend
                _walk(sub, [True] * len(sub.invars), found)
        for var in eqn.outvars:
            tainted.add(var)
            name = _float_name(var.aval)
            if name is not None and name not in found:
                found[name] = eqn.primitive.name
    return [not isinstance(v, jcore.Literal) and v in tainted for v in jaxpr.outvars]


def analyze(closed: jcore.ClosedJaxpr, checked: Sequence[bool]) -> Flow:
    """Run the pass over a traced loss whose flat inputs are marked ``checked``."""
    found: dict[str, str] = {}
    outputs = _walk(closed.jaxpr, checked, found)
    return Flow(depends=any(outputs), dtypes=found)
