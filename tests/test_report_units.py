"""The report's pure parts: fail rules, comparison, rendering and atomic files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pytest_gradhealth import GradientProfile, InvalidArgumentError, ReportFormatError
from pytest_gradhealth.metrics import METRICS, Metric
from pytest_gradhealth.report.baseline import SETTINGS, compare, settings_mismatch
from pytest_gradhealth.report.export import build_report, load_report, write_json, write_text
from pytest_gradhealth.report.gate import FailRule, parse_fail_rule
from pytest_gradhealth.report.markdown import render_markdown
from pytest_gradhealth.report.records import ProbeRecord, worst_first
from pytest_gradhealth.report.text import render_comparison, render_table
from pytest_gradhealth.verdicts import failure_message


def record(test: str, rate: float, seq_len: int = 11, verdict: str = "ok", probe: str = "m") -> ProbeRecord:
    norms = rate ** np.arange(seq_len - 1, -1, -1.0)
    profile = GradientProfile(norms=norms, sample_norms=norms[None], seq_len=seq_len, name=probe, model="M")
    return ProbeRecord(test, probe, profile, verdict)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("ratio:10x", FailRule("ratio", 10.0, "x")),
        ("half_life:20%", FailRule("half_life", 20.0, "%")),
        ("horizon:5", FailRule("horizon", 5.0, "")),
        ("HORIZON:2.5", FailRule("horizon", 2.5, "")),
    ],
)
def test_fail_rules_parse(text, rule):
    assert parse_fail_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ratio", "expected METRIC:AMOUNT"),
        ("loss:10x", "expected METRIC:AMOUNT"),
        ("ratio:20%", "give a factor such as ratio:10x"),
        ("ratio:0.5x", "a factor must be > 1"),
        ("half_life:120%", "a percentage between 0 and 100"),
    ],
)
def test_bad_fail_rules_say_what_is_accepted(text, words):
    with pytest.raises(InvalidArgumentError, match=words):
        parse_fail_rule(text)


def test_fail_rule_thresholds_are_exclusive_bounds():
    # a ratio is compared as its log10 (what METRICS["ratio"].gated reads): a factor of 10 is one decade
    assert not FailRule("ratio", 10, "x").regressed(math.log10(1e-3), math.log10(1e-4))
    assert FailRule("ratio", 10, "x").regressed(math.log10(1e-3), math.log10(0.99e-4))
    assert FailRule("ratio", 10, "x").regressed(-3000.0, -3001.5)  # beyond float64's range too
    assert not FailRule("half_life", 20, "%").regressed(10.0, 8.0)
    assert FailRule("half_life", 20, "%").regressed(10.0, 7.9)
    assert FailRule("half_life", 20, "%").regressed(math.inf, 500.0)
    assert not FailRule("half_life", 20, "%").regressed(math.inf, math.inf)
    assert FailRule("horizon", 5, "").regressed(20, 14)
    assert FailRule("ratio", 10, "x").regressed(-3.0, math.nan)
    assert FailRule("ratio", 10, "x").regressed(-3.0, -math.inf)  # no gradient reaches step 0 any more
    assert not FailRule("ratio", 10, "x").regressed(math.nan, -9.0)


def test_comparison_matches_by_test_and_probe_and_flags_regressions():
    old = [record("t::a", 0.9), record("t::b", 0.9), record("t::gone", 0.9)]
    new = [record("t::a", 0.9), record("t::b", 0.5), record("t::new", 0.1)]
    rows = {row.key: row for row in compare(old, new, [parse_fail_rule("ratio:10x")])}
    assert {k: r.status for k, r in rows.items()} == {
        "t::a [m]": "ok",
        "t::b [m]": "regressed",
        "t::gone [m]": "removed",
        "t::new [m]": "new",
    }
    # ratio 0.9^10 -> 0.5^10: log10 change = 10 * log10(0.5 / 0.9)
    assert rows["t::b [m]"].log10_change == pytest.approx(10 * math.log10(0.5 / 0.9))
    lines = render_comparison(list(rows.values()), "base.json")
    assert lines[0] == "gradhealth baseline base.json: 1 new, 1 ok, 1 regressed, 1 removed"
    assert "regressed (ratio:10x)" in lines[3]


def test_every_compared_setting_is_a_field_the_profile_records():
    fields = {f.name for f in dataclasses.fields(GradientProfile)}
    assert set(SETTINGS) <= fields, set(SETTINGS) - fields  # a setting no profile records is never compared


def test_seeds_that_differ_are_a_mismatch_named_before_the_pooled_batch_size():
    single = dataclasses.replace(record("t::a", 0.9).profile, batch_size=8)
    seeded = dataclasses.replace(single, seeds=8, batch_size=64)
    assert settings_mismatch(seeded, single) == ["seeds 8 -> none", "batch_size 64 -> 8"]
    assert settings_mismatch(single, dataclasses.replace(single, seeds=8)) == ["seeds none -> 8"]
    assert settings_mismatch(single, single) == []


def test_table_is_sorted_worst_first_quiet_keeps_compact_rows_and_very_quiet_lists_only_problems():
    records = [record("t::good", 0.99), record("t::bad", 0.1, verdict="vanishing"), record("t::nan", 0.5)]
    records[2].verdict = "non-finite"
    assert [r.test for r in worst_first(records)] == ["t::nan", "t::bad", "t::good"]
    lines = render_table(records, width=200)
    assert lines[0] == "gradhealth: 3 probes: 1 non-finite, 1 vanishing, 1 ok"
    assert [line.split()[0] for line in lines[3:]] == ["t::nan", "t::bad", "t::good"]
    assert "profile" in lines[1]
    quiet = render_table(records, width=200, verbosity=-1)
    assert quiet[1].split() == ["test", "probe", "seq_len", "ratio", "horizon", "verdict"]
    assert [line.split()[0] for line in quiet[3:]] == ["t::nan", "t::bad", "t::good"]
    very_quiet = render_table(records, width=200, verbosity=-2)
    assert len(very_quiet) == 5 and "t::good" not in "\n".join(very_quiet)


def test_narrow_terminal_drops_columns_and_colour_is_optional():
    records = [record("tests/test_models.py::test_a_rather_long_test_name[param-1]", 0.5, verdict="vanishing")]
    narrow = render_table(records, width=60)
    assert narrow[1].split() == ["probe", "seq_len", "ratio", "horizon", "verdict"]
    assert narrow[3] == "tests/test_models.py::test_a_rather_long_test_name[param-1]"  # never cut
    assert max(len(line) for line in narrow[4:-1]) <= 60
    assert narrow[-1] == "(left out to fit 60 columns: rate, half-life, profile; -v shows every column)"
    assert render_table(records, width=200)[-1].startswith("tests/test_models.py")  # nothing left out, no note
    assert "\x1b[" not in "\n".join(narrow)
    assert "\x1b[31mvanishing\x1b[0m" in "\n".join(render_table(records, width=200, color=True))


def test_report_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "report.json"
    data = build_report([record("t::a", 0.9)], [], {"min_ratio": 1e-3}, tmp_path)
    write_json(path, data)
    loaded = load_report(path)
    assert loaded.records[0].key == "t::a [m]"
    np.testing.assert_array_equal(loaded.records[0].profile.norms, 0.9 ** np.arange(10, -1, -1.0))
    # a failed write leaves the previous file intact and no temporary file behind
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text())["tool"] == "pytest-gradhealth"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_write_that_may_not_replace_leaves_an_existing_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "base.json"
    write_text(path, "first", replace=False)
    with pytest.raises(FileExistsError):
        write_text(path, "second", replace=False)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["base.json"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", r"not valid JSON \(Expecting property name .* at line 1, column 2\)"),
        ('{"a": 1}', "a JSON file, but not a pytest-gradhealth report"),
        ('{"tool": "pytest-gradhealth", "schema": 7, "probes": []}', "report schema 7; this version"),
        ('{"tool": "pytest-gradhealth", "schema": 1, "probes": [{"test": 1}]}', r"probes\[0\]: expected an object"),
    ],
)
def test_corrupt_or_foreign_report_names_the_file_and_the_problem(tmp_path, content, words):
    path = tmp_path / "baseline.json"
    path.write_text(content)
    with pytest.raises(ReportFormatError, match=f"{path}: {words}"):
        load_report(path)


def test_a_metric_is_one_registry_entry_that_reaches_table_rules_comparison_and_messages(monkeypatch):
    first = Metric("first", "first", lambda p: float(p.norms[0]), "first norm {:.3g}", units=("x",), in_summary=True)
    monkeypatch.setitem(METRICS, "first", first)
    old, new = record("t::a", 0.9), record("t::a", 0.5)
    assert render_table([old], width=200)[1].split()[3:8] == ["ratio", "rate", "half-life", "horizon", "first"]
    (row,) = compare([old], [new], [parse_fail_rule("first:100x")])
    assert row.broken == [FailRule("first", 100.0, "x")]  # 0.9^10 -> 0.5^10 is 360x less
    table = render_comparison([row], "b.json", width=300)
    assert table[1].split()[-2:] == ["first", "status"] and "0.349 -> 0.000977  regressed" in table[3]
    assert "first norm 0.000977" in failure_message("assert_x", "vanishing", new.profile, [], None, ["hint: try"])


def test_markdown_without_a_baseline_lists_every_probe_worst_first():
    records = [record("t::good", 0.99), record("t::bad|x", 0.1, verdict="vanishing")]
    lines = render_markdown(records)
    assert lines[:3] == ["## Gradient health", "", "**2 probes: 1 vanishing, 1 ok**"]
    table = lines[lines.index("### Probes") + 2 :]
    assert table[0].startswith("| test | probe | seq_len | ratio |") and table[1].startswith("|---|")
    assert table[2].startswith("| t::bad\\|x | m | 11 |") and "| vanishing |" in table[2]


def test_a_change_that_makes_the_gradient_explode_fails_peak_ratio():
    """Every other rule reads only a fall; a gradient that grows backwards in time is caught by
    peak_ratio:10x (peak 1 -> 1024), and a change whose peak grows less (1 -> 6.2) is not."""
    healthy, exploding, better = record("t::a", 0.9), record("t::a", 2.0), record("t::a", 1.2)
    rule = parse_fail_rule("peak_ratio:10x")
    assert str(rule) == "peak_ratio:10x"
    assert [r.status for r in compare([healthy], [exploding], [rule])] == ["regressed"]
    assert [r.status for r in compare([healthy], [better], [rule])] == ["ok"]
    assert [r.status for r in compare([healthy], [exploding], [parse_fail_rule("ratio:10x")])] == ["ok"]
