"""The assertions: verdicts against exact profiles, messages a person can act on, validated thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_probe_math import positive_inputs, relu_rnn
from torch import nn
from zoo import RNNCellLoop, seeded

from pytest_gradhealth import (
    GradientHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    assert_finite_gradients,
    assert_memory_horizon,
    assert_no_exploding,
    assert_no_vanishing,
    assert_no_worse_than,
    probe,
)
from pytest_gradhealth import reference as ref
from pytest_gradhealth.recording import observe


def linear(a: float):
    """ReLU RNN with W_hh = a*I and positive inputs: norms[t] = a^(T-1-t) exactly (see test_probe_math)."""
    return relu_rnn(a), {"input_fn": positive_inputs}


def test_failure_is_an_assertion_error_that_pytest_counts_as_failed():
    assert issubclass(GradientHealthError, AssertionError)


def test_no_vanishing_passes_at_the_bound_and_fails_just_above_it():
    model, opts = linear(0.5)
    profile = assert_no_vanishing(model, 11, min_ratio=0.5**10 * (1 - 1e-9), **opts)
    assert profile.ratio == pytest.approx(0.5**10, rel=1e-12)
    with pytest.raises(GradientHealthError):
        assert_no_vanishing(model, 11, min_ratio=0.5**10 * (1 + 1e-6), **opts)


def test_vanishing_message_has_the_numbers_the_step_the_sparkline_and_a_hint():
    model = ref.lstm(8, 16)
    with pytest.raises(GradientHealthError) as info:
        assert_no_vanishing(model, 100, min_ratio=1e-3)
    profile = probe(model, 100)
    message = str(info.value)
    first_below = profile.first_step_below(1e-3)
    assert "assert_no_vanishing: gradient vanishing in ReferenceLSTM at seq_len=100" in message
    assert f"ratio first/last = {profile.ratio:.3g}, required >= 0.001 (min_ratio)" in message
    assert f"at step {first_below} ({99 - first_below} steps back)" in message
    assert f"rate {profile.rate:.4g} per step, half-life {profile.half_life:.3g} steps" in message
    assert "profile (log scale, step 0 -> 99): ▁" in message and "█" in message
    assert "forget-gate bias" in message


def test_exploding_is_measured_against_the_last_step_exactly():
    model, opts = linear(1.05)
    peak = 1.05**29
    assert_no_exploding(model, 30, max_ratio=peak * (1 + 1e-9), **opts)
    with pytest.raises(GradientHealthError, match=r"largest norm / last step's = 4.12, allowed <= 4 .*peak at step 0"):
        assert_no_exploding(model, 30, max_ratio=4.0, **opts)


def test_memory_horizon_is_exact_for_a_linear_recurrence():
    model, opts = linear(0.5)  # 0.5^6 >= 0.01 > 0.5^7
    assert assert_memory_horizon(model, 20, min_steps=6, **opts).horizon() == 6
    with pytest.raises(GradientHealthError, match=r"horizon\(0.01\) = 6 steps, required >= 7 \(min_steps\)"):
        assert_memory_horizon(model, 20, min_steps=7, **opts)


def test_finite_gradients_names_the_first_bad_step():
    class NanFromStep3(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0] + torch.sqrt(x[:, 3:5, :1] * 0.0).sum(1, keepdim=True)

    with pytest.raises(GradientHealthError, match=r"NaN/Inf gradient at 2 step\(s\), first at step 3 \(6 steps back"):
        assert_finite_gradients(NanFromStep3(), 10)
    # every assertion refuses to judge non-finite gradients by a ratio
    with pytest.raises(GradientHealthError, match="gradient non-finite"):
        assert_no_vanishing(NanFromStep3(), 10, min_ratio=1e-30)


def test_underflow_to_zero_is_called_out_with_the_float64_fix():
    with pytest.raises(GradientHealthError, match=r"underflowed to exactly zero in float32.*dtype=torch.float64"):
        assert_no_vanishing(seeded(RNNCellLoop, 8, 32), 400)


def test_no_worse_than_a_reference_model_or_profile():
    good, bad = ref.lstm(8, 16, forget_bias=3.0), ref.rnn(8, 16)
    assert_no_worse_than(good, bad, 30)
    with pytest.raises(GradientHealthError, match=r"ReferenceLSTM's ratio .* / factor 10\)"):
        assert_no_worse_than(bad, good, 30)
    saved = probe(good, 30)
    with pytest.raises(GradientHealthError):
        assert_no_worse_than(bad, saved, 30, factor=2.0)
    with pytest.raises(InvalidArgumentError, match="measured at seq_len=30, not 40"):
        assert_no_worse_than(bad, saved, 40)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda m: assert_no_vanishing(m, 5, min_ratio=0), r"min_ratio must be a finite number > 0, got 0"),
        (lambda m: assert_no_vanishing(m, 5, min_ratio=math.nan), "min_ratio must be a finite number"),
        (lambda m: assert_no_exploding(m, 5, max_ratio=-1.0), "max_ratio must be a finite number > 0, got -1.0"),
        (lambda m: assert_no_exploding(m, 5, max_ratio=math.inf), "got inf"),
        (lambda m: assert_memory_horizon(m, 5, min_steps=5), "min_steps=5 can never be met at seq_len=5"),
        (lambda m: assert_memory_horizon(m, 5, min_steps=2, threshold=2.0), r"threshold must be .*<= 1, got 2.0"),
        (lambda m: assert_no_worse_than(m, m, 5, factor=0.5), "factor must be a finite number > 1"),
    ],
)
def test_bad_thresholds_are_refused_before_probing(call, words):
    calls = []
    model = nn.RNN(3, 4, batch_first=True)
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(InvalidArgumentError, match=words):
        call(model)
    assert calls == []


def test_threshold_of_the_wrong_type_and_unknown_options():
    model = nn.RNN(3, 4, batch_first=True)
    with pytest.raises(InvalidArgumentTypeError, match="min_ratio must be a number, got str '1e-3'"):
        assert_no_vanishing(model, 5, min_ratio="1e-3")
    with pytest.raises(InvalidArgumentTypeError, match=r"unknown probe option\(s\) 'seqlen'; valid options are"):
        assert_no_vanishing(model, 5, seqlen=3)


def test_each_assertion_records_its_profile_and_verdict():
    records = []
    model, opts = linear(0.5)
    with observe(lambda profile, check: records.append((profile.ratio, check))):
        assert_no_vanishing(model, 5, min_ratio=1e-3, **opts)
        with pytest.raises(GradientHealthError):
            assert_no_vanishing(model, 5, min_ratio=0.5, **opts)
        probe(model, 5, **opts)
    assert [c and c["verdict"] for _, c in records] == ["ok", "vanishing", None]
    assert records[1][1]["thresholds"] == {"min_ratio": 0.5}
    assert records[1][1]["message"].startswith("assert_no_vanishing: gradient vanishing")
    np.testing.assert_allclose([r for r, _ in records], 0.5**4)


# -- reference models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [ref.rnn, ref.lstm, ref.gru])
def test_reference_models_are_seeded_batch_first_and_leave_the_global_rng(build):
    state = torch.get_rng_state()
    a, b, c = build(4, 6, 2, seed=1), build(4, 6, 2, seed=1), build(4, 6, 2, seed=2)
    assert torch.equal(state, torch.get_rng_state())
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name
    assert a(torch.randn(3, 5, 4)).shape == (3, 5, 6)


def test_reference_lstm_forget_bias_sets_every_layer():
    model = ref.lstm(4, 6, 2, forget_bias=2.5)
    for layer in range(2):
        assert torch.all(getattr(model.core, f"bias_ih_l{layer}")[6:12] == 2.5)
        assert torch.all(getattr(model.core, f"bias_hh_l{layer}")[6:12] == 0.0)


# The mission's story in numbers (input 32, hidden 64, seed 0, batch 8, float32; measured values in comments).


def test_story_tanh_rnn_fails_by_many_orders_of_magnitude_at_100_steps():
    with pytest.raises(GradientHealthError) as info:
        assert_no_vanishing(ref.rnn(32, 64), 100, min_ratio=1e-3)
    assert probe(ref.rnn(32, 64), 100).ratio < 1e-25  # measured 3.2e-32: 29 orders below the bound
    assert "vanilla RNN" in str(info.value)


def test_story_lstm_at_default_initialisation_fails_too():
    with pytest.raises(GradientHealthError):
        assert_no_vanishing(ref.lstm(32, 64), 100, min_ratio=1e-3)  # measured 1.9e-22


def test_story_lstm_with_forget_bias_2_passes_at_100_and_fails_by_200():
    assert_no_vanishing(ref.lstm(32, 64, forget_bias=2.0), 100, min_ratio=1e-3)  # measured 8.9e-3
    with pytest.raises(GradientHealthError):
        assert_no_vanishing(ref.lstm(32, 64, forget_bias=2.0), 200, min_ratio=1e-3)


def test_story_lstm_with_forget_bias_3_passes_at_1000_and_fails_at_3000():
    assert_no_vanishing(ref.lstm(32, 64, forget_bias=3.0), 1000, min_ratio=1e-3)  # measured 0.15
    with pytest.raises(GradientHealthError):
        assert_no_vanishing(ref.lstm(32, 64, forget_bias=3.0), 3000, min_ratio=1e-3)  # measured 3.1e-7
