"""The log format: real records against the shipped JSON Schema, and the docs against both."""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from toy import Params, grad, grad_with_doubled_b, loss

import gradguard as gg
from gradguard.guard import DISABLE_ENV

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "log-schema.md"


def make_params() -> Params:
    rng = np.random.default_rng(2)
    return {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    text = (
        importlib.resources.files("gradguard.logs") / "schemas" / "log-record.schema.json"
    ).read_text(encoding="utf-8")
    loaded = json.loads(text)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema)


def strict_records(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every line of ``path`` parsed as strict JSON (a NaN or Infinity token fails the test)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path}: non-strict JSON token {token}")

    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "every record ends its line"
    records = []
    for line in text.splitlines():
        record = json.loads(line, parse_constant=refuse)
        assert isinstance(record, dict)
        records.append(record)
    return records


def assert_valid(validator: Draft202012Validator, records: list[dict[str, Any]]) -> None:
    for record in records:
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# -- the schema itself -----------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict[str, Any]) -> None:
    """The shipped schema is itself valid under the 2020-12 metaschema it declares."""
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


# -- real records against it -----------------------------------------------------------------


def _passing(log: str) -> gg.CheckReport:
    return gg.check(loss, make_params(), grad, seed=0, log_file=log)


def _failing(log: str) -> gg.CheckReport:
    return gg.check(loss, make_params(), grad_with_doubled_b, seed=0, log_file=log)


def _nondeterministic(log: str) -> gg.CheckReport:
    noise = np.random.default_rng()  # no seed: a different value on every call

    def noisy_loss(p: Params) -> float:
        return loss(p) + float(noise.normal())

    return gg.check(noisy_loss, make_params(), grad, seed=0, log_file=log)


def _python_floats(log: str) -> gg.CheckReport:
    return gg.check(
        lambda p: p["a"] ** 2 + 3.0 * p["a"] * p["c"],
        {"a": 1.5, "c": -0.25},
        lambda p: {"a": 2.0 * p["a"] + 3.0 * p["c"], "c": 3.0 * p["a"]},
        seed=0,
        log_file=log,
    )


@pytest.mark.parametrize(
    ("make", "status"),
    [
        pytest.param(_passing, "pass", id="passing"),
        pytest.param(_failing, "fail", id="failing"),
        pytest.param(_nondeterministic, "nondeterministic", id="nondeterministic"),
        pytest.param(_python_floats, "pass", id="python-floats"),
    ],
)
def test_check_records_are_strict_json_valid_under_the_schema(
    tmp_path: pathlib.Path,
    validator: Draft202012Validator,
    make: Callable[[str], gg.CheckReport],
    status: str,
) -> None:
    """A check's record (passing, failing, nondeterministic, Python-float params) is one
    strict-JSON line that the schema accepts, and it says what the report says."""
    log = tmp_path / "check.jsonl"
    report = make(str(log))
    records = strict_records(log)
    assert len(records) == 1
    assert_valid(validator, records)
    record = records[0]
    assert record["event"] == "gradcheck" and record["source"] == "check"
    assert record["status"] == status == report.status.value
    assert record["passed"] is report.passed
    assert [p["name"] for p in record["params"]] == list(report.names)


def test_python_float_params_are_recorded_as_0_d_float64_tensors(tmp_path: pathlib.Path) -> None:
    """Python floats as params are logged as tensors of shape [] and dtype float64."""
    log = tmp_path / "check.jsonl"
    _python_floats(str(log))
    (record,) = strict_records(log)
    assert [(p["name"], p["shape"], p["dtype"]) for p in record["params"]] == [
        ("a", [], "float64"),
        ("c", [], "float64"),
    ]


def test_not_finite_difference_is_written_as_null(tmp_path: pathlib.Path) -> None:
    """A nondeterministic check's NaN differences are written as null, never as a NaN token."""
    log = tmp_path / "check.jsonl"
    report = _nondeterministic(str(log))
    assert np.isnan(report.difference)
    text = log.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    (record,) = strict_records(log)
    assert record["difference"] is None
    assert [p["difference"] for p in record["params"]] == [None, None]
    assert {p["status"] for p in record["params"]} == {"nondeterministic"}


def _guard(log: pathlib.Path, **kw: Any) -> gg.Guard:
    return gg.Guard(loss, make_params(), grad, every=1, seed=0, log_file=log, **kw)


def test_guard_that_switches_itself_off_writes_valid_records(
    tmp_path: pathlib.Path, validator: Draft202012Validator
) -> None:
    """A guard's checks and its guard_disabled record (reason "passed") validate, one run_id."""
    log = tmp_path / "guard.jsonl"
    guard = _guard(log, max_checks=2, run_id="run-passed")
    for _ in range(5):
        guard.step()
    records = strict_records(log)
    assert_valid(validator, records)
    assert [r["event"] for r in records] == ["gradcheck", "gradcheck", "guard_disabled"]
    assert {r["run_id"] for r in records} == {"run-passed"}
    assert {r["source"] for r in records} == {"guard"}
    assert [r["step"] for r in records] == [0, 1, 1]
    assert records[-1]["reason"] == "passed"
    assert records[-1]["checks"] == records[-1]["passed_checks"] == 2


def test_guard_disabled_by_the_environment_writes_a_valid_record(
    tmp_path: pathlib.Path, validator: Draft202012Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With GRADGUARD_DISABLE=1 the guard's only record is guard_disabled, reason "environment"."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    log = tmp_path / "guard.jsonl"
    guard = _guard(log)
    assert guard.step() is None
    records = strict_records(log)
    assert_valid(validator, records)
    assert [(r["event"], r["reason"]) for r in records] == [("guard_disabled", "environment")]
    assert records[0]["checks"] == records[0]["passed_checks"] == 0


def test_guard_disabled_by_the_user_writes_a_valid_record(
    tmp_path: pathlib.Path, validator: Draft202012Validator
) -> None:
    """guard.disable() after one check writes guard_disabled, reason "user", with the counts."""
    log = tmp_path / "guard.jsonl"
    guard = _guard(log, max_checks=None)
    guard.step()
    guard.disable()
    records = strict_records(log)
    assert_valid(validator, records)
    assert [r["event"] for r in records] == ["gradcheck", "guard_disabled"]
    assert records[-1]["reason"] == "user"
    assert records[-1]["checks"] == records[-1]["passed_checks"] == 1


def test_schema_rejects_a_record_missing_fields_or_with_a_local_time(
    validator: Draft202012Validator,
) -> None:
    """A record that is not a gradguard record by the schema's rules does not slip through.

    (A guard against a schema so loose that the validations above pass vacuously.)
    """
    bad = {
        "schema": 1,
        "event": "gradcheck",
        "timestamp": "2026-11-21 21:56:05",
        "run_id": None,
        "source": "check",
        "step": None,
    }
    messages = {e.validator for e in validator.iter_errors(bad)}
    assert "pattern" in messages  # the timestamp is not ISO 8601 in UTC
    assert "required" in messages  # a gradcheck needs passed, params, ...


# -- the docs against the schema -------------------------------------------------------------

FIELD_ROW = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)


def _parts(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The schema's four sets of properties, keyed by the start of the doc heading of each."""
    gradcheck, disabled = (branch["then"]["properties"] for branch in schema["allOf"])
    return {
        "Every record": schema["properties"],
        '`event: "gradcheck"`': gradcheck,
        "Each entry of `params`": schema["$defs"]["param"]["properties"],
        '`event: "guard_disabled"`': disabled,
    }


def _doc_tables() -> dict[str, list[str]]:
    """The doc's field rows (whole lines), keyed by the heading of the section they are in."""
    tables: dict[str, list[str]] = {}
    for section in re.split(r"^#+ ", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE):
        rows = [line for line in section.splitlines() if FIELD_ROW.match(line)]
        if rows:
            tables[section.splitlines()[0]] = rows
    return tables


def _row_name(row: str) -> str:
    match = FIELD_ROW.match(row)
    assert match is not None
    return match.group(1)


def test_doc_documents_exactly_the_schemas_fields(schema: dict[str, Any]) -> None:
    """docs/log-schema.md has a "| `name` |" row for every schema property, and no other."""
    doc = DOC.read_text(encoding="utf-8")
    expected = {name for properties in _parts(schema).values() for name in properties}
    for name in expected:
        assert f"| `{name}` |" in doc, f"{name} is in the schema but not in {DOC.name}"
    assert set(FIELD_ROW.findall(doc)) - expected == set(), "fields the schema does not define"


def test_each_doc_table_lists_the_fields_of_its_part_of_the_schema(
    schema: dict[str, Any],
) -> None:
    """Each table documents its own part of the schema (every record's fields, a gradcheck's,
    a params entry's, a guard_disabled's), each field once."""
    parts = _parts(schema)
    seen = set()
    for heading, rows in _doc_tables().items():
        (part,) = [key for key in parts if heading.startswith(key)]
        assert sorted(_row_name(row) for row in rows) == sorted(parts[part]), heading
        seen.add(part)
    assert seen == set(parts)


def _cells(row: str) -> list[str]:
    """A GitHub table row's cells: split on pipes that are not escaped as ``\\|``."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_doc_rows_have_four_cells_and_the_schemas_description(schema: dict[str, Any]) -> None:
    """Each field row renders as field | type | required | meaning, the meaning being the
    schema's description of that field."""
    parts = _parts(schema)
    for heading, rows in _doc_tables().items():
        (part,) = [key for key in parts if heading.startswith(key)]
        for row in rows:
            name, cells = _row_name(row), _cells(row)
            assert len(cells) == 4, f"{name}: {len(cells)} cells in {row!r}"
            assert cells[3] == parts[part][name]["description"], name


def test_doc_example_records_are_valid(validator: Draft202012Validator) -> None:
    """The example lines in docs/log-schema.md are strict JSON that the schema accepts."""
    doc = DOC.read_text(encoding="utf-8")
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    lines = example.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["gradcheck", "guard_disabled"]
    assert_valid(validator, records)
