"""`warmup=K`: K steps run before the measured window, the states carried into it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_probe_math import ScalarLinearRecurrence, constant_forget_lstm, constant_input

from pytest_gradhealth import GradHealthError, probe, reference
from pytest_gradhealth.profile import GradientProfile

REL = 1e-9


@pytest.mark.parametrize("warmup", [0, 1, 50])
@pytest.mark.parametrize("a", [0.7, -0.9])
def test_linear_recurrence_decays_exactly_as_a_to_the_lag_whatever_the_warmup(a, warmup):
    profile = probe(ScalarLinearRecurrence(a), 20, input_size=3, dtype=torch.float64, warmup=warmup)
    lags = np.arange(19, -1, -1)
    np.testing.assert_allclose(profile.norms / profile.norms[-1], abs(a) ** lags, rtol=REL)
    assert profile.rate == pytest.approx(abs(a), rel=REL)
    assert profile.lyapunov == pytest.approx(math.log(abs(a)), rel=REL)
    assert profile.seq_len == 20 and profile.warmup == warmup and len(profile.norms) == 20


@pytest.mark.parametrize("warmup", [0, 40])
def test_lstm_with_constant_forget_gate_decays_as_sigmoid_of_its_bias_after_a_warmup(warmup):
    f = 1 / (1 + math.exp(-2.0))
    profile = probe(constant_forget_lstm(2.0), 30, input_fn=constant_input, warmup=warmup)
    np.testing.assert_allclose(profile.norms / profile.norms[-1], f ** np.arange(29, -1, -1), rtol=REL)
    assert profile.lyapunov == pytest.approx(math.log(f), rel=REL)


@pytest.mark.parametrize("measure", ["input", "hidden", "cell"])
def test_the_window_reads_the_last_seq_len_steps_of_the_longer_run(measure):
    # The gradient at a step does not depend on which other steps are measured: the warmed-up profile is the tail
    # of the profile of the whole run, with the same drawn inputs and loss.
    model = reference.lstm(4, 6).double()
    warm = probe(model, 15, warmup=25, measure=measure)
    whole = probe(model, 40, measure=measure)
    np.testing.assert_allclose(warm.norms, whole.norms[25:], rtol=1e-10)
    np.testing.assert_allclose(warm.sample_norms, whole.sample_norms[:, 25:], rtol=1e-10)
    np.testing.assert_array_equal(warm.steps, np.arange(15))


def test_checkpoints_are_steps_of_the_measured_window():
    model = reference.rnn(4, 6).double()
    warm = probe(model, 21, warmup=9, checkpoints=5, measure="hidden")
    whole = probe(model, 30, measure="hidden")
    np.testing.assert_array_equal(warm.steps, [0, 5, 10, 15, 20])
    np.testing.assert_allclose(warm.norms, whole.norms[9 + warm.steps], rtol=1e-10)


def test_given_inputs_and_input_fn_cover_the_warmup_and_the_window():
    model = reference.rnn(3, 5).double()
    x = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    given = probe(model, 8, warmup=4, inputs=x)
    calls = []

    def input_fn(batch, seq_len, gen):
        calls.append(seq_len)
        return x

    drawn = probe(model, 8, warmup=4, input_fn=input_fn, batch_size=2)
    assert calls == [12]
    np.testing.assert_array_equal(given.norms, drawn.norms)
    with pytest.raises(GradHealthError, match=r"12 timesteps .* warmup \+ seq_len is 4 \+ 10; pass seq_len=8"):
        probe(model, 10, warmup=4, inputs=x)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"warmup": -1}, "warmup must be >= 0, got -1"),
        ({"warmup": 2.0}, "warmup must be an int, got float 2.0"),
        ({"warmup": True}, "warmup must be an int, got bool True"),
        ({"warmup": 3, "lengths": [6, 4]}, "warmup=3 runs every sample for warmup \\+ seq_len steps"),
    ],
)
def test_bad_warmup_is_refused_before_any_work(options, match):
    with pytest.raises(GradHealthError, match=match):
        probe(reference.rnn(3, 4), 6, **options)


def test_warmup_leaves_model_and_rng_alone_and_repeats_exactly(state_guard):
    model = state_guard(reference.lstm(4, 6))
    first, second = probe(model, 12, warmup=30), probe(model, 12, warmup=30)
    np.testing.assert_array_equal(first.norms, second.norms)


def test_warmup_is_kept_in_json_and_old_profiles_load_with_zero():
    profile = probe(reference.rnn(3, 4), 6, warmup=5)
    data = profile.to_dict()
    assert data["warmup"] == 5
    assert GradientProfile.from_dict(data).warmup == 5
    del data["warmup"]  # a profile saved before the field existed
    assert GradientProfile.from_dict(data).warmup == 0


def test_lstm_forget_bias_3_decays_after_a_warmup_where_the_zero_state_probe_reads_growth():
    # The zero-state start bends the profile into a U, and a least-squares rate over 100 steps reads above 1; after
    # a warm-up the same model's stationary decay shows (its Lyapunov factor is about 0.996, a half-life of about 150
    # steps; one draw of 100 steps reads 0.998 with the probe's float32 inputs).
    model = reference.lstm(32, 64, forget_bias=3)
    assert probe(model, 100).rate > 1.0
    warmed = probe(model, 100, warmup=1000)
    assert warmed.rate < 1.0 and warmed.lyapunov < 0
    assert warmed.rate == pytest.approx(0.998, abs=0.002)
