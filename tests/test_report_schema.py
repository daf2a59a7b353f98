"""Every saved report is checked field by field: a mutated or foreign file is one ReportFormatError naming the file
and the field, never a traceback, and whatever loads can be rendered, compared and summarised."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_gradhealth import GradientProfile, ReportFormatError
from pytest_gradhealth.report.baseline import compare
from pytest_gradhealth.report.export import build_report, load_report
from pytest_gradhealth.report.gate import parse_fail_rule
from pytest_gradhealth.report.markdown import render_markdown
from pytest_gradhealth.report.records import ProbeRecord
from pytest_gradhealth.report.text import render_comparison, render_table


def valid_report() -> dict:
    norms = 0.8 ** np.arange(5, -1, -1.0)
    norms[2] = np.nan
    profile = GradientProfile(norms=norms, sample_norms=np.vstack([norms, norms]), seq_len=6, name="p", model="M")
    check = {"assertion": "assert_memory_horizon", "verdict": "ok", "thresholds": {"min_steps": 2, "threshold": 0.01}}
    records = [ProbeRecord("t.py::a", "p", profile, "ok", check), ProbeRecord("t.py::b", "p", profile, "vanishing")]
    return json.loads(json.dumps(build_report(records, [], {"min_ratio": 1e-3, "max_ratio": 1e3}, Path("."))))


def paths(data, prefix=()):
    """Every (path, value) in nested JSON data."""
    yield prefix, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from paths(value, (*prefix, i))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw):
    data = valid_report()
    spots = [p for p, _ in paths(data) if p]
    for _ in range(draw(st.integers(1, 3))):
        spot = draw(st.sampled_from(spots))
        parent = data
        for key in spot[:-1]:
            parent = parent[key] if isinstance(parent, (dict, list)) and _has(parent, key) else None
            if parent is None:
                break
        if parent is None or not _has(parent, spot[-1]):
            continue
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[spot[-1]]
        else:
            parent[spot[-1]] = draw(JSON)
    return data


def _has(container, key) -> bool:
    """Whether `container` (which an earlier mutation may have replaced by a scalar) still holds `key`."""
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and key < len(container)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_a_mutated_report_loads_or_is_one_clear_error_never_a_traceback(tmp_path, data):
    path = tmp_path / "base.json"
    path.write_text(json.dumps(data, allow_nan=True))
    try:
        report = load_report(path)
    except ReportFormatError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    rows = compare(report.records, report.records, [parse_fail_rule("ratio:10x"), parse_fail_rule("horizon:2")])
    render_table(report.records, width=80)
    render_comparison(rows, str(path), width=80)
    render_markdown(report.records, rows, str(path))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d["probes"][0]["profile"].update(steps=[0, 2, 1, 3, 4, 5]), "steps: expected increasing"),
        (lambda d: d["probes"][0]["profile"].update(steps=[0, 1, 2, 3, 4, 9]), r"steps\[5\]: expected an integer"),
        (lambda d: d["probes"][0].update(verdict="great"), "verdict: expected one of non-finite"),
        (lambda d: d["probes"][0]["profile"].update(norms=[1, 1, 1, 1, 1, True]), r"norms\[5\]: expected a number"),
        (lambda d: d["probes"][0]["profile"].update(schema=2), "schema: expected 1"),
        (lambda d: d.update(scope={"full": "yes"}), "scope.full: expected true or false"),
    ],
)
def test_each_field_is_checked_and_named(tmp_path, change, words):
    data = copy.deepcopy(valid_report())
    change(data)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportFormatError, match=words):
        load_report(path)


def test_the_valid_report_round_trips(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(valid_report()))
    report = load_report(path)
    assert [r.key for r in report.records] == ["t.py::a [p]", "t.py::b [p]"]
    assert np.isnan(report.records[0].profile.norms[2])
