"""The cost opt-out of a failing vanishing assertion's diagnosis: `explain=False` on the assertions and the fixture,
`gradhealth_explain` / `--gradhealth-explain` / the marker for a whole suite or one test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_gradhealth import assert_memory_horizon, assert_no_vanishing, assert_no_worse_than, diagnosing, reference
from pytest_gradhealth.errors import GradientHealthError, InvalidArgumentTypeError


def default_lstm() -> nn.LSTM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.LSTM(8, 16, batch_first=True)


@pytest.fixture
def no_diagnosis(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("diagnose ran although explain=False")

    monkeypatch.setattr(diagnosing, "diagnose", refuse)


@pytest.mark.parametrize(
    "assertion, arguments",
    [
        (assert_no_vanishing, {"min_ratio": 1e-3}),
        (assert_memory_horizon, {"min_steps": 50}),
        (assert_no_worse_than, {"reference": reference.lstm(8, 16, forget_bias=3.0)}),
    ],
    ids=["no_vanishing", "memory_horizon", "no_worse_than"],
)
def test_explain_false_fails_with_the_hint_alone_and_runs_no_diagnosis(no_diagnosis, assertion, arguments):
    with pytest.raises(GradientHealthError) as info:
        assertion(default_lstm(), seq_len=60, explain=False, **arguments)
    assert "hint: raise the LSTM's forget-gate bias" in str(info.value)
    assert "measured fix" not in str(info.value)


def test_explain_must_be_a_bool_and_is_checked_before_probing():
    with pytest.raises(InvalidArgumentTypeError, match="explain must be True or False, got 'no'"):
        assert_no_vanishing(object(), 60, explain="no")


SUITE = """
import pytest
from pytest_gradhealth import reference

def test_suite_default(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(8, 16), 60)

@pytest.mark.gradhealth(explain=True)
def test_marker_turns_it_back_on(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(8, 16), 60)
"""


def test_the_ini_key_turns_the_diagnosis_off_and_the_marker_back_on(pytester):
    pytester.makepyfile(SUITE)
    pytester.makeini("[pytest]\ngradhealth_explain = false\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    suite_default = text[text.index("_ test_suite_default _") : text.index("_ test_marker_turns_it_back_on _")]
    assert "measured fix" not in suite_default and "hint:" in suite_default
    assert "measured fix: forget-gate bias +" in text[text.index("_ test_marker_turns_it_back_on _") :]


def test_a_bad_explain_value_is_a_usage_error_naming_the_option(pytester):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--gradhealth-explain", "maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*command line: explain must be true or false, got 'maybe'*"])


def test_a_failing_assertion_with_seeds_measures_its_fix_over_the_seeds(monkeypatch):
    seeded = []
    original = diagnosing.measure

    def recording(model, options):
        seeded.append(options.seeds)
        return original(model, options)

    monkeypatch.setattr(diagnosing, "measure", recording)
    with pytest.raises(GradientHealthError, match="measured fix: forget-gate bias"):
        assert_no_vanishing(reference.lstm(8, 16), 60, min_ratio=1e-3, seeds=3)
    assert seeded and set(seeded) == {3}  # the seeded profile and every remedy tried: judged as the assertion was


def test_a_failing_assertion_on_a_factory_says_why_no_fix_was_measured():
    with pytest.raises(GradientHealthError, match=r"measured fix: not measured \(diagnose .* not a factory"):
        assert_no_vanishing(lambda: reference.lstm(8, 16), 60, min_ratio=1e-3, seeds=3, input_size=8)
