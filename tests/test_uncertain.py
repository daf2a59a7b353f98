"""Verdicts with seeds=N judge the interval of the per-seed figures: ok, failing, or "uncertain" when it straddles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_gradhealth import (
    GradientHealthError,
    UncertainVerdictError,
    assert_no_vanishing,
    probe,
    reference,
)
from pytest_gradhealth.checks import MemoryHorizon, NoExploding, NoVanishing
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.markdown import render_markdown
from pytest_gradhealth.report.records import ProbeRecord
from pytest_gradhealth.report.schema import profile as check_profile
from pytest_gradhealth.report.text import render_table, summary_line
from pytest_gradhealth.verdicts import judge


def drawn(ratios: list[float], peaks: list[float] | None = None) -> GradientProfile:
    """A pooled profile of len(ratios) seeds at seq_len 3: seed i has norms [ratio_i, peak_i, 1], so its ratio is
    exactly ratio_i and its peak ratio max(ratio_i, peak_i, 1)."""
    peaks = peaks or [1.0] * len(ratios)
    seeds = [
        GradientProfile(norms=[r, p, 1.0], sample_norms=[[r, p, 1.0]], seq_len=3, seed=i, model="M")
        for i, (r, p) in enumerate(zip(ratios, peaks, strict=True))
    ]
    samples = np.concatenate([s.sample_norms for s in seeds])
    return GradientProfile(
        norms=np.sqrt((samples**2).mean(axis=0)),
        sample_norms=samples,
        seq_len=3,
        model="M",
        seed=0,
        seeds=len(seeds),
        seed_profiles=seeds,
    )


# 8 seeds: the 95% interval of the median is [min, max] (coverage 1 - 2/2^8 = 0.992; the next order statistics
# cover only 1 - 18/256 = 0.93).
STRADDLING = [10.0**e for e in (-3.4, -3.3, -3.2, -3.1, -3.1, -3.0, -2.9, -2.8)]


def test_an_interval_wholly_above_or_below_the_bound_settles_and_one_across_it_is_uncertain():
    check = NoVanishing(min_ratio=1e-3)
    assert check.verdict(drawn([10.0**e for e in np.linspace(-2.9, -2.0, 8)])) == "ok"
    assert check.verdict(drawn([10.0**e for e in np.linspace(-4.0, -3.1, 8)])) == "vanishing"
    assert check.verdict(drawn(STRADDLING)) == "uncertain"
    # The median alone (10**-3.1) fails; single draws keep their plain verdicts.
    assert check.verdict(drawn([1e-3])) == check._verdict(drawn([1e-3]).seed_profiles[0]) == "ok"


def test_exploding_and_horizon_judge_their_own_intervals():
    assert NoExploding(max_ratio=100.0).verdict(drawn([1.0] * 8, [50.0] * 4 + [200.0] * 4)) == "uncertain"
    assert NoExploding(max_ratio=100.0).verdict(drawn([1.0] * 8, [150.0] * 8)) == "exploding"
    assert NoExploding(max_ratio=100.0).verdict(drawn([1.0] * 8, [50.0] * 8)) == "ok"
    # seq_len 3, threshold 0.01: a seed whose earliest ratio is >= 0.01 has horizon 2, else 1.
    horizon = MemoryHorizon(min_steps=2, threshold=0.01)
    assert horizon.verdict(drawn([0.1] * 4 + [0.001] * 4)) == "uncertain"
    assert horizon.verdict(drawn([0.1] * 8)) == "ok"
    assert horizon.verdict(drawn([0.001] * 8)) == "vanishing"


def test_a_nan_in_any_seed_is_non_finite_even_when_the_pool_hides_it():
    pooled = drawn([0.1] * 8)
    pooled.seed_profiles[3] = GradientProfile(norms=[math.nan, 1.0, 1.0], sample_norms=[[math.nan, 1, 1]], seq_len=3)
    assert NoVanishing().verdict(pooled) == "non-finite"
    assert judge(pooled, 1e-3, 1e3) == "non-finite"


def test_the_uncertain_message_names_n_the_interval_the_bound_and_the_seeds_that_would_settle_it():
    record = NoVanishing(min_ratio=1e-3).record(drawn(STRADDLING), lambda verdict: [f"hint: {verdict}"])
    assert record["verdict"] == "uncertain"
    message = record["message"]
    assert message.startswith("assert_no_vanishing: gradient uncertain in M at seq_len=3")
    # log10 interval [-3.4, -2.8], median -3.1: half-width 0.3, distance 0.1 -> 8 x 3^2 = 72 seeds
    assert (
        "seeds=8: the 99% interval of the median ratio first/last is [0.000398 .. 0.00158] (median 0.000794) "
        "against 0.001 (min_ratio): it straddles the bound" in message
    )
    assert "about 72 seeds in all would settle it" in message
    assert "shrinks like 1/sqrt(N)" in message


def test_a_settled_verdict_with_seeds_says_the_whole_interval_fails():
    record = NoVanishing(min_ratio=1e-2).record(drawn(STRADDLING), lambda verdict: [])
    assert record["verdict"] == "vanishing"
    assert (
        "[0.000398 .. 0.00158] (median 0.000794) against 0.01 (min_ratio): the whole interval fails"
        in record["message"]
    )


def test_the_session_judges_unchecked_probes_with_seeds_by_their_intervals():
    assert judge(drawn(STRADDLING), 1e-3, 1e3) == "uncertain"
    assert judge(drawn(STRADDLING), 1e-4, 1e3) == "ok"
    assert judge(drawn(STRADDLING), 1e-2, 1e3) == "vanishing"
    assert judge(drawn([1.0] * 8, [1e4] * 8), 1e-3, 1e3) == "exploding"
    # a single draw: exactly today's rule (the median of a straddling set fails)
    assert judge(drawn(STRADDLING).seed_profiles[0], 1e-3, 1e3) == "vanishing"


def test_the_report_shows_uncertain_as_its_own_verdict():
    records = [
        ProbeRecord("t::a", "lstm", drawn(STRADDLING), "uncertain", {"assertion": "assert_no_vanishing"}),
        ProbeRecord("t::b", "gru", drawn([0.5] * 8), "ok"),
    ]
    assert summary_line(records) == "gradhealth: 2 probes: 1 uncertain, 1 ok"
    table = render_table(records, width=200)
    assert "uncertain" in table[3] and "t::a" in table[3]  # worst first: above the ok probe
    assert "\x1b[35muncertain\x1b[0m" in "\n".join(render_table(records, width=200, color=True))
    assert ("gradhealth.lstm.verdict", "uncertain") in records[0].junit_properties()
    data = json.loads(json.dumps(records[0].to_dict()))
    assert ProbeRecord.from_dict(data, "probes[0]").verdict == "uncertain"
    check_profile(data["profile"], "probes[0].profile")
    markdown = render_markdown(records)
    assert "**2 probes: 1 uncertain, 1 ok**" in markdown
    assert any(line.startswith("| t::a | lstm |") and line.endswith("| uncertain |") for line in markdown)


# Real numbers: lstm(forget_bias=2), input 32, hidden 64, seeds 0..7 (default batch). Its log10 ratio per seed spans
# [-3.41, -2.95] at 150 steps (median 7.06e-4): min_ratio=1e-3 lies inside; at 100 steps [5.4e-3, 1.1e-2] clears it.
@pytest.fixture(scope="module")
def forget_bias_2():
    return reference.lstm(32, 64, forget_bias=2)


def test_an_lstm_whose_seeds_straddle_min_ratio_is_uncertain_not_passed(forget_bias_2):
    with pytest.raises(UncertainVerdictError) as raised:
        assert_no_vanishing(forget_bias_2, 150, min_ratio=1e-3, seeds=8)
    message = str(raised.value)
    assert "gradient uncertain in ReferenceLSTM at seq_len=150" in message
    assert "seeds=8: the 99% interval of the median ratio first/last is [0.00039 .. 0.00113]" in message
    assert "about 19 seeds in all would settle it" in message
    assert isinstance(raised.value, GradientHealthError) and isinstance(raised.value, AssertionError)


def test_the_same_lstm_clearly_passes_at_100_steps_and_clearly_fails_at_200(forget_bias_2):
    profile = assert_no_vanishing(forget_bias_2, 100, min_ratio=1e-3, seeds=8)
    assert profile.interval("ratio").low > 5e-3
    longer = probe(forget_bias_2, 200, seeds=8)
    assert longer.interval("ratio").high < 2e-4
    assert NoVanishing(min_ratio=1e-3).verdict(longer) == "vanishing"


def test_a_suite_fails_the_uncertain_test_and_reports_it_as_its_own_verdict(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makepyfile(
        test_suite="""
from pytest_gradhealth import reference


def test_near_the_bound(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(32, 64, forget_bias=2), 150, min_ratio=1e-3, seeds=8)
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--gradhealth", "--gradhealth-json=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*UncertainVerdictError*", "gradhealth: 1 probe: 1 uncertain"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert [p["verdict"] for p in report["probes"]] == ["uncertain"]
    assert report["probes"][0]["check"]["verdict"] == "uncertain"
