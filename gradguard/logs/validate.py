"""Validating a log record against the shipped JSON Schema, fast enough for gigabyte logs.

``schemas/log-record.schema.json`` is the contract of a log line. This module compiles it,
once, into plain Python checks: the reader validates every record before using it, so a
hand-edited, foreign or corrupted line is counted and skipped, never half-read. The compiler
knows the keywords the schema uses (and refuses to compile one it does not know, so the
schema cannot outgrow it silently); a test compares its verdicts with ``jsonschema``'s on
arbitrary records. It is stricter than ``jsonschema`` in one place: a ``pattern`` matches
ASCII only, to the end of the string (Python's ``\\d`` and ``$`` would also accept other
scripts' digits and a trailing newline, which no timestamp parser reads).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["SCHEMA_FILE", "finite", "load_schema", "record_error"]

SCHEMA_FILE = "log-record.schema.json"

# A check: value -> None when it is valid, else (where, what): the path to the first problem
# (built only on failure, from the inside out) and what is wrong there.
_Error = tuple[str, str]
_Check = Callable[[Any], "_Error | None"]

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description"})
# json.loads makes exactly these types; bool is not an integer, 1.0 is one (JSON Schema).
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "integer": (int,),
    "number": (int, float),
}


def _short(value: Any) -> str:
    """A value for an error message: never more than about 40 characters."""
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true and 1 differ, 1 and 1.0 do not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _valid(value: Any) -> _Error | None:
    return None


def _compile(schema: Any, root: dict[str, Any]) -> _Check:
    """One schema (a dict, or a boolean) compiled into a check."""
    if schema is True:
        return _valid
    if schema is False:
        return lambda value: ("", "no value is allowed here")
    unknown = set(schema) - _ANNOTATIONS - set(_KEYWORDS)
    if unknown:
        raise ValueError(f"the log schema uses keywords this validator lacks: {sorted(unknown)}")
    compiled = [_KEYWORDS[key](schema, root) for key in _KEYWORDS if key in schema]
    checks = tuple(c for c in compiled if c is not None)
    if not checks:
        return _valid
    if len(checks) == 1:
        return checks[0]

    def check(value: Any) -> _Error | None:
        for one in checks:
            error = one(value)
            if error is not None:
                return error
        return None

    return check


def _type(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    exact = frozenset(t for name in names for t in _TYPES[name])
    integral_float = "integer" in names and "number" not in names

    def check(value: Any) -> _Error | None:
        if type(value) in exact or (integral_float and type(value) is float and value.is_integer()):
            return None
        return ("", f"{_short(value)} is not of type {' or '.join(names)}")

    return check


def _const(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    expected = schema["const"]
    return lambda value: (
        None if _equal(value, expected) else ("", f"{_short(value)} is not {expected!r}")
    )


def _enum(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    options = schema["enum"]
    strings = frozenset(o for o in options if isinstance(o, str))

    def check(value: Any) -> _Error | None:
        if type(value) is str and value in strings:
            return None
        if any(_equal(value, option) for option in options):
            return None
        return ("", f"{_short(value)} is not one of {', '.join(map(str, options))}")

    return check


def _pattern(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    source = schema["pattern"]
    # ASCII classes, and "$" at the very end (Python's "$" also matches before a final "\n").
    regex = re.compile(source[:-1] + r"\Z" if source.endswith("$") else source, re.ASCII)
    return lambda value: (
        None
        if not isinstance(value, str) or regex.search(value)
        else ("", f"{_short(value)} does not match {source}")
    )


def _minimum(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    bound = schema["minimum"]

    def check(value: Any) -> _Error | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value >= bound:
            return None
        return ("", f"{_short(value)} is less than {bound}")

    return check


def _required(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    names = tuple(schema["required"])

    def check(value: Any) -> _Error | None:
        if not isinstance(value, dict):
            return None
        for name in names:
            if name not in value:
                missing = [n for n in names if n not in value]
                return ("", f"missing field(s) {', '.join(missing)}")
        return None

    return check


def _properties(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    fields = tuple((name, _compile(sub, root)) for name, sub in schema["properties"].items())

    def check(value: Any) -> _Error | None:
        if not isinstance(value, dict):
            return None
        for name, field in fields:
            if name in value:
                error = field(value[name])
                if error is not None:
                    return (f".{name}{error[0]}", error[1])
        return None

    return check


def _additional_properties(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    known = frozenset(schema.get("properties", {}))
    extra = _compile(schema["additionalProperties"], root)

    def check(value: Any) -> _Error | None:
        if not isinstance(value, dict):
            return None
        for name in value.keys() - known:
            error = extra(value[name])
            if error is not None:
                return (f".{_short(name)}{error[0]}", error[1])
        return None

    return check


def _items(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    item = _compile(schema["items"], root)

    def check(value: Any) -> _Error | None:
        if not isinstance(value, list):
            return None
        for index, element in enumerate(value):
            error = item(element)
            if error is not None:
                return (f"[{index}]{error[0]}", error[1])
        return None

    return check


def _all_of(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    parts = tuple(_compile(sub, root) for sub in schema["allOf"])

    def check(value: Any) -> _Error | None:
        for part in parts:
            error = part(value)
            if error is not None:
                return error
        return None

    return check


def _if(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    condition = _compile(schema["if"], root)
    then = _compile(schema.get("then", True), root)
    otherwise = _compile(schema.get("else", True), root)
    return lambda value: then(value) if condition(value) is None else otherwise(value)


def _ref(schema: dict[str, Any], root: dict[str, Any]) -> _Check:
    reference = schema["$ref"]
    if not reference.startswith("#/"):
        raise ValueError(f"the log schema refers outside itself: {reference}")
    target: Any = root
    for part in reference[2:].split("/"):
        target = target[part]
    compiled: list[_Check] = []  # compiled on first use: a definition may refer to itself

    def check(value: Any) -> _Error | None:
        if not compiled:
            compiled.append(_compile(target, root))
        return compiled[0](value)

    return check


def _then_else(schema: dict[str, Any], root: dict[str, Any]) -> None:
    return None  # compiled with "if"


_KEYWORDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], _Check | None]] = {
    "$ref": _ref,
    "type": _type,
    "const": _const,
    "enum": _enum,
    "pattern": _pattern,
    "minimum": _minimum,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional_properties,
    "items": _items,
    "allOf": _all_of,
    "if": _if,
    "then": _then_else,
    "else": _then_else,
}


def load_schema() -> dict[str, Any]:
    """The shipped JSON Schema of a log record, as a dict."""
    text = (importlib.resources.files("gradguard.logs") / "schemas" / SCHEMA_FILE).read_text(
        encoding="utf-8"
    )
    schema = json.loads(text)
    assert isinstance(schema, dict), "the shipped log schema is a JSON object"
    return schema


@functools.cache
def _validator() -> _Check:
    schema = load_schema()
    return _compile(schema, schema)


def record_error(record: Any) -> str | None:
    """Why ``record`` is not a valid log record (the first problem found, in one short line),
    or ``None`` when it is valid.

    Numbers must also be finite: strict JSON has no NaN or infinity, and a number too large
    for a float (``1e999``) is refused by the reader before it gets here.
    """
    error = _validator()(record)
    return None if error is None else f"record{error[0]}: {error[1]}"


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (not a number, a bool, NaN, infinite, huge)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return result if math.isfinite(result) else None
