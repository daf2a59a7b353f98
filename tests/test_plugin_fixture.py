"""The fixture, the marker, ini keys and options, as a user's suite runs them (pytester)."""

from __future__ import annotations

import json

import pytest

MODELS = """
from pytest_gradhealth import reference
RNN = reference.rnn(8, 16)
GOOD_LSTM = reference.lstm(8, 16, forget_bias=3.0)
"""


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(models=MODELS)
    return pytester


def test_passing_and_failing_assertions_through_the_fixture(suite):
    suite.makepyfile(
        test_flow="""
        from models import RNN, GOOD_LSTM

        def test_good(gradhealth):
            gradhealth.assert_no_vanishing(GOOD_LSTM, seq_len=50)

        def test_bad(gradhealth):
            gradhealth.assert_no_vanishing(RNN, seq_len=50)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GradientHealthError: assert_no_vanishing: gradient vanishing in ReferenceRNN at seq_len=50*",
            "*ratio first/last = *, required >= 0.001 (min_ratio)*",
            "*hint: a vanilla RNN keeps a fixed fraction of its gradient per step*",
        ]
    )


def test_traceback_ends_at_the_users_line(suite):
    suite.makepyfile(
        test_trace="""
        from models import RNN
        from pytest_gradhealth import assert_no_vanishing

        def test_plain():
            assert_no_vanishing(RNN, 40)  # the user's line

        def test_fixture(gradhealth):
            gradhealth.assert_no_vanishing(RNN)  # the user's line
        """
    )
    result = suite.runpytest("--tb=long")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert out.count("# the user's line") == 2
    for internal in ("assertions.py", "fixture.py", "probing.py"):
        assert internal not in out


def test_precedence_explicit_over_marker_over_option_over_ini(suite):
    suite.makeini(
        """
        [pytest]
        gradhealth_seq_len = 30
        gradhealth_min_ratio = 1e-5
        gradhealth_batch_size = 3
        gradhealth_seed = 4
        """
    )
    suite.makepyfile(
        test_prec="""
        import pytest
        from models import GOOD_LSTM

        def test_ini_and_option(gradhealth):
            s = gradhealth.settings
            assert (s.seq_len, s.min_ratio, s.batch_size, s.seed) == (30, 1e-5, 6, 4)
            p = gradhealth.probe(GOOD_LSTM)
            assert (p.seq_len, p.batch_size, p.seed) == (30, 6, 4)

        @pytest.mark.gradhealth(seed=9, seq_len=50)
        class TestMarked:
            @pytest.mark.gradhealth(seq_len=12, min_ratio=0.5, mode="train")
            def test_marker(self, gradhealth):
                s = gradhealth.settings
                assert (s.seq_len, s.min_ratio, s.batch_size, s.seed) == (12, 0.5, 6, 9)
                p = gradhealth.probe(GOOD_LSTM)
                assert (p.seq_len, p.mode) == (12, "train")

        @pytest.mark.gradhealth(seq_len=12)
        def test_explicit(gradhealth):
            p = gradhealth.probe(GOOD_LSTM, seq_len=7, seed=1)
            assert (p.seq_len, p.seed, p.batch_size) == (7, 1, 6)
        """
    )
    suite.runpytest("--gradhealth-batch-size=6").assert_outcomes(passed=3)


def test_unknown_marker_key_is_a_clear_usage_error(suite):
    suite.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.gradhealth(seqlen=10)
        def test_x(gradhealth):
            pass
        """
    )
    result = suite.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*test_typo.py::test_x: @pytest.mark.gradhealth: unknown key 'seqlen'; known keys are seq_len, *"]
    )


@pytest.mark.parametrize(
    ("args", "ini", "words"),
    [
        (["--gradhealth-min-ratio=0"], "", "*command line: min_ratio must be a positive finite number, got '0'*"),
        ([], "gradhealth_seq_len = ten", "*ini file: seq_len must be an integer >= 2, got 'ten'*"),
        (["--gradhealth-device=tpu"], "", "*device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'*"),
        (["--gradhealth-min-ratio=10", "--gradhealth-max-ratio=5"], "", "*min_ratio (10) must be below max_ratio (5)*"),
    ],
)
def test_bad_settings_stop_the_session_with_a_clear_message(suite, args, ini, words):
    suite.makeini(f"[pytest]\n{ini}\n")
    suite.makepyfile(test_one="def test_one():\n    pass\n")
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([words])


def test_bad_marker_value_is_a_clear_usage_error(suite):
    suite.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.gradhealth(min_ratio=-1)
        def test_x():
            pass
        """
    )
    result = suite.runpytest()
    result.stderr.fnmatch_lines(["*@pytest.mark.gradhealth: min_ratio must be a positive finite number, got -1*"])


def test_every_profile_measured_in_a_test_is_recorded_on_its_report(suite):
    suite.makepyfile(
        test_rec="""
        import pytest
        from models import RNN, GOOD_LSTM
        from pytest_gradhealth import probe, assert_no_vanishing

        def test_two(gradhealth):
            probe(RNN, 10)
            probe(RNN, 12)
            gradhealth.assert_no_vanishing(GOOD_LSTM, 20, name="lstm")

        def test_failing():
            assert_no_vanishing(RNN, 50)

        def test_none():
            pass
        """
    )
    reprec = suite.inline_run("--gradhealth-json=r.json")
    reports = {r.nodeid.split("::")[-1]: r for r in reprec.getreports("pytest_runtest_logreport") if r.when == "call"}
    probes = json.loads((suite.path / "r.json").read_text())["probes"]
    records = {name: [p for p in probes if p["test"].endswith(f"::{name}")] for name in reports}
    assert [r["probe"] for r in records["test_two"]] == ["ReferenceRNN", "ReferenceRNN#2", "lstm"]
    assert [r["profile"]["seq_len"] for r in records["test_two"]] == [10, 12, 20]
    assert [r["check"] and r["check"]["verdict"] for r in records["test_two"]] == [None, None, "ok"]
    assert records["test_failing"][0]["check"]["verdict"] == "vanishing"
    assert records["test_none"] == []
    # the report keeps only short strings, which JUnit XML shows as properties
    properties = dict(reports["test_two"].user_properties)
    assert all(isinstance(value, str) for value in properties.values())
    assert properties["gradhealth.lstm.verdict"] == "ok" and properties["gradhealth.ReferenceRNN#2.seq_len"] == "12"
    assert {"ratio", "rate", "half_life", "horizon"} <= {key.split(".")[-1] for key in properties}


def test_warmup_from_ini_option_and_marker_reaches_the_probes(suite):
    suite.makeini(
        """
        [pytest]
        gradhealth_warmup = 5
        """
    )
    suite.makepyfile(
        test_warm="""
        import pytest
        from models import GOOD_LSTM

        def test_option(gradhealth):
            assert gradhealth.probe(GOOD_LSTM, seq_len=10).warmup == 7

        @pytest.mark.gradhealth(warmup=0, seeds=3)
        def test_marker_turns_it_off_and_asks_for_seeds(gradhealth):
            profile = gradhealth.probe(GOOD_LSTM, seq_len=10)
            assert (profile.warmup, profile.seeds, len(profile.seed_profiles)) == (0, 3, 3)

        def test_explicit(gradhealth):
            assert gradhealth.probe(GOOD_LSTM, seq_len=10, warmup=3).warmup == 3
        """
    )
    suite.runpytest("--gradhealth-warmup=7").assert_outcomes(passed=3)
    result = suite.runpytest("--gradhealth-warmup=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*command line: warmup must be an integer >= 0, got '-1'*"])
