"""Log records for the reader, report and validator tests: real records with chosen statuses,
and a hypothesis strategy for real records with arbitrary JSON in any field."""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import attrs
import numpy as np
from hypothesis import strategies as st
from toy import Params, grad, loss

import gradguard as gg
from gradguard.logs.records import check_record
from gradguard.logs.writer import emit
from gradguard.results import overall_status


def make_params() -> Params:
    rng = np.random.default_rng(2)
    return {"W": rng.normal(size=(3, 2)), "b": np.zeros(2)}


def relabel(report: gg.CheckReport, statuses: dict[str, gg.Status]) -> gg.CheckReport:
    """``report`` as a check that ended with these tensor statuses would have written it."""
    params = tuple(attrs.evolve(p, status=statuses.get(p.name, p.status)) for p in report.params)
    status = overall_status(params)
    return attrs.evolve(report, params=params, status=status, passed=status is gg.Status.PASS)


def write_check(
    log: pathlib.Path, statuses: dict[str, gg.Status], *, seed: int = 0, **context: Any
) -> None:
    """One check's record, with the given tensor statuses, through the real writer."""
    report = relabel(gg.check(loss, make_params(), grad, seed=seed), statuses)
    emit(check_record(report, gg.CheckContext(log_file=str(log), **context)), str(log))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@functools.cache
def record_template() -> dict[str, Any]:
    """A real check record: a run, a step, a label, tensor b with status zero."""
    report = relabel(gg.check(loss, make_params(), grad, seed=0), {"b": gg.Status.ZERO})
    return check_record(report, gg.CheckContext(run_id="r", step=3, label="t::x"))


def mutated_records() -> st.SearchStrategy[dict[str, Any]]:
    """A real record with some fields (top level and in a tensor's entry) replaced by arbitrary
    JSON values, or removed."""

    def mutate(changes: list[tuple[str, Any]], param_changes: list[tuple[str, Any]]) -> Any:
        record = json.loads(json.dumps(record_template()))
        for field, value in changes:
            if value is _REMOVE:
                record.pop(field, None)
            else:
                record[field] = value
        if isinstance(record.get("params"), list) and record["params"]:
            param = record["params"][0]
            for field, value in param_changes if isinstance(param, dict) else ():
                if value is _REMOVE:
                    param.pop(field, None)
                else:
                    param[field] = value
        return record

    value = _JSON | st.just(_REMOVE)
    fields = sorted(record_template())
    param_fields = sorted(record_template()["params"][0])
    return st.builds(
        mutate,
        st.lists(st.tuples(st.sampled_from(fields), value), max_size=3),
        st.lists(st.tuples(st.sampled_from(param_fields), value), max_size=3),
    )


_REMOVE = object()
