"""The `significant` fail rule: a regression beyond the seed spread and beyond a minimum effect, never a coin flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe
from pytest_gradhealth.intervals import separation_chance, significantly_worse
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.baseline import compare
from pytest_gradhealth.report.gate import SIGNIFICANT_MIN_EFFECT, SignificantRule, parse_fail_rule
from pytest_gradhealth.report.records import ProbeRecord

SEQ_LEN, WARMUP, SEEDS = 80, 40, 8


def rnn_factory(shift: int):
    """A tanh RNN whose initial draws are shifted by `shift` numbers, as one more module created first shifts them."""

    def build() -> nn.Module:
        torch.rand(shift)
        return nn.RNN(8, 16, batch_first=True)

    return build


def lstm_factory(forget_bias: float):
    def build() -> nn.Module:
        lstm = nn.LSTM(8, 16, batch_first=True)
        with torch.no_grad():
            lstm.bias_ih_l0[16:32].fill_(forget_bias)
            lstm.bias_hh_l0[16:32].zero_()
        return lstm

    return build


def seeded(factory) -> GradientProfile:
    return probe(factory, SEQ_LEN, warmup=WARMUP, seeds=SEEDS)


def test_no_alarm_on_neutral_init_shifts_that_fail_a_one_draw_ratio_gate_and_an_alarm_on_a_real_regression():
    significant, ratio_gate = parse_fail_rule("significant"), parse_fail_rule("ratio:10x")
    # the one-draw gate: the model built under seed 0, probed with input seed 0 (the first of the seeds=8 draws)
    one_draw = probe(rnn_factory(0), SEQ_LEN, warmup=WARMUP, seeds=1)
    flaky = []
    for shift in range(1, 200):
        if ratio_gate.broken_by(one_draw, probe(rnn_factory(shift), SEQ_LEN, warmup=WARMUP, seeds=1)):
            flaky.append(shift)
        if len(flaky) == 5:
            break
    assert len(flaky) == 5
    baseline = seeded(rnn_factory(0))
    assert not any(significant.broken_by(baseline, seeded(rnn_factory(shift))) for shift in flaky)
    assert significant.broken_by(seeded(lstm_factory(2.0)), seeded(lstm_factory(1.0)))
    assert not significant.broken_by(seeded(lstm_factory(1.0)), seeded(lstm_factory(2.0)))  # an improvement


def test_the_comparison_names_the_rule_a_regression_broke():
    old, new = seeded(lstm_factory(2.0)), seeded(lstm_factory(1.0))
    rows = compare([ProbeRecord("t", "lstm", old, "ok")], [ProbeRecord("t", "lstm", new, "ok")], [SignificantRule()])
    assert [(row.status, row.reason) for row in rows] == [("regressed", "significant")]


def test_a_gradient_that_turns_non_finite_is_a_significant_regression():
    significant = SignificantRule()
    baseline, broken = seeded(lstm_factory(2.0)), seeded(lstm_factory(math.nan))
    assert baseline.finite and not broken.finite
    assert significant.broken_by(baseline, broken)
    assert not significant.broken_by(broken, baseline)  # a non-finite baseline: nothing to regress from


def test_significant_says_it_cannot_judge_fewer_than_seven_seeds():
    significant = SignificantRule()
    assert significant.min_seeds == 7
    one_draw = probe(lstm_factory(2.0)(), SEQ_LEN)
    assert (
        significant.cannot_judge(one_draw)
        == "measured with 1 draw(s); significant needs seeds of at least 7 on both sides"
    )
    assert significant.cannot_judge(seeded(lstm_factory(2.0))) == ""
    assert parse_fail_rule("ratio:10x").cannot_judge(one_draw) == ""


def test_parse_reads_significant_in_any_case():
    rule = parse_fail_rule(" Significant ")
    assert isinstance(rule, SignificantRule) and str(rule) == "significant" and rule.metric == "lyapunov"


def test_separation_of_eight_and_eight_draws_has_chance_one_in_12870():
    assert separation_chance(8, 8) == 1 / 12870
    assert separation_chance(6, 6) > 0.001 >= separation_chance(7, 7)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (np.arange(8) * 0.001, np.arange(8) * 0.001 - 0.02, True),  # separated, medians 0.02 apart
        (np.arange(8) * 0.001, np.arange(8) * 0.001 - 0.004, False),  # separated but below the minimum effect
        (np.arange(8) * 0.001, np.arange(8) * 0.001 - 0.007 + np.array([0.01] + [0] * 7), False),  # one value overlaps
        (np.arange(6) * 0.001, np.arange(6) * 0.001 - 0.5, False),  # six and six: chance 1/924 > 0.001
        ([0.0], [-1.0], False),  # one draw each: no spread to judge
        (np.arange(8) * 0.001, [math.nan] + [-1.0] * 7, False),  # NaN: for the plain rules
    ],
)
def test_significantly_worse_needs_separation_beyond_chance_and_a_minimum_effect(old, new, expected):
    assert significantly_worse(old, new, "lower", SIGNIFICANT_MIN_EFFECT, 0.001) is expected
    assert significantly_worse(-np.asarray(old), -np.asarray(new), "higher", SIGNIFICANT_MIN_EFFECT, 0.001) is expected
