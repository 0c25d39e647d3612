"""The reader's schema validator: the verdicts of jsonschema on the shipped schema, only faster."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from jsonschema import Draft202012Validator
from log_records import mutated_records, record_template

from gradguard.logs import validate


@pytest.fixture(scope="module")
def reference() -> Draft202012Validator:
    return Draft202012Validator(validate.load_schema())


def test_a_real_record_is_valid(reference: Draft202012Validator) -> None:
    """A record as the writer makes it is valid for both validators."""
    record = record_template()
    assert reference.is_valid(record)
    assert validate.record_error(record) is None


@settings(max_examples=500, deadline=None)
@given(record=mutated_records())
def test_verdicts_agree_with_jsonschema(reference: Draft202012Validator, record: Any) -> None:
    """On real records with arbitrary JSON in any field, a record is valid exactly when
    jsonschema says so, except that a timestamp must match its pattern in ASCII, to the end."""
    error = validate.record_error(record)
    if error is None:
        assert reference.is_valid(record)
    elif reference.is_valid(record):
        assert error.startswith("record.timestamp: ") and "does not match" in error


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"run_id": 3}, "record.run_id: 3 is not of type string or null"),
        ({"schema": True}, "record.schema: True is not 1"),
        ({"status": "maybe"}, "record.status: 'maybe' is not one of pass, fail,"),
        ({"evaluations": -1}, "record.evaluations: -1 is less than 0"),
        ({"notes": {"x": [1]}}, "record.notes.'x': list is not of type"),
        ({"event": "gradcheck", "seed": 1.5}, "record.seed: 1.5 is not of type integer"),
    ],
)
def test_errors_name_the_field_and_the_problem(change: dict[str, Any], error: str) -> None:
    """The first problem found, with its path in the record, in one short line."""
    record = {**copy.deepcopy(record_template()), **change}
    message = validate.record_error(record)
    assert message is not None and message.startswith(error), message


def test_an_integral_float_is_an_integer_as_in_json_schema() -> None:
    """JSON Schema counts 3.0 as an integer (the reader turns a step of 3.0 into 3)."""
    assert validate.record_error({**record_template(), "step": 3.0}) is None
    assert validate.record_error({**record_template(), "step": True}) is not None


@pytest.mark.parametrize("timestamp", ["2026-01-01T00:00:00+00:00\n", "٢٠٢٦-01-01T00:00:00+00:00"])
def test_a_pattern_matches_in_ascii_to_the_end(timestamp: str) -> None:
    """A trailing newline or another script's digits do not make a timestamp (Python's "$"
    and "\\d" would accept both; no timestamp parser does)."""
    error = validate.record_error({**record_template(), "timestamp": timestamp})
    assert error is not None and error.startswith("record.timestamp: ")


def test_a_schema_keyword_the_validator_lacks_is_refused() -> None:
    """A schema that starts using a keyword the compiler does not know fails loudly (the
    shipped schema cannot outgrow the validator silently)."""
    with pytest.raises(ValueError, match="maxLength"):
        validate._compile({"type": "string", "maxLength": 3}, {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (2.5, 2.5), (True, None), (None, None), ("1", None), (10**400, None)],
)
def test_finite(value: Any, expected: float | None) -> None:
    """finite() is a float for finite numbers only: not bools, strings, or ints beyond float."""
    assert validate.finite(value) == expected
