"""Diagnosis by what the model contains and what its gradients do: advice, underflow against structural zeros."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn
from zoo import TCN, RNNCellLoop, RNNModel, seeded

from pytest_gradhealth import GradientProfile, probe, reference


def test_exact_zeros_beyond_a_convolutions_receptive_field_are_structural():
    profile = probe(seeded(TCN), 20)
    assert profile.zeros == "structural"
    assert profile.subnormal_steps.size == 0
    assert profile.advice is None  # no recurrent module the registry knows


def test_a_float32_gradient_that_decays_through_the_subnormal_range_underflows_and_is_flagged():
    # A cell loop: the probe cannot renormalise it, so the plain pass's underflow stays and is flagged.
    profile = probe(seeded(RNNCellLoop, 4, 64), 200)
    assert profile.zeros == "underflow" and profile.log10_sample_norms is None
    zero = profile.steps[profile.norms == 0]
    # The steps just after the last zero hold subnormal entries: the gradient lost precision before it vanished.
    assert zero.max() + 1 in profile.subnormal_steps
    assert np.all(profile.log10_norms[zero] == -np.inf)
    exact = probe(seeded(RNNCellLoop, 4, 64), 200, dtype=torch.float64)
    assert exact.zeros is None and exact.subnormal_steps.size == 0 and (exact.norms > 0).all()


def test_a_profile_without_zeros_says_none():
    profile = probe(reference.lstm(4, 8), 10)
    assert profile.zeros is None and profile.subnormal_steps.size == 0


def test_advice_comes_from_the_lstm_inside_not_the_class_name():
    profile = probe(seeded(RNNModel), 10)
    assert profile.model == "RNNModel" and "forget-gate bias" in profile.advice


def test_the_diagnosis_survives_json_and_older_profiles_read_as_unknown():
    profile = probe(reference.rnn(4, 64), 200)
    restored = GradientProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert (restored.zeros, restored.advice) == (profile.zeros, profile.advice)
    np.testing.assert_array_equal(restored.subnormal_steps, profile.subnormal_steps)
    older = {k: v for k, v in profile.to_dict().items() if k not in ("subnormal_steps", "zeros", "advice")}
    old = GradientProfile.from_dict(older)
    assert (old.subnormal_steps, old.zeros, old.advice) == (None, None, None)


def test_a_state_probe_reads_subnormals_at_its_measured_steps():
    profile = probe(nn.RNN(3, 4, batch_first=True), 6, measure="hidden")
    assert profile.subnormal_steps is not None and profile.subnormal_steps.size == 0  # read, and none
    loop = probe(seeded(RNNCellLoop, 4, 64), 200, measure="hidden", cell="cell", checkpoints=5)  # not renormalised
    assert loop.subnormal_steps.size and set(loop.subnormal_steps) <= set(loop.steps)


def test_subnormal_flags_follow_the_measured_checkpoints():
    profile = probe(reference.rnn(4, 64), 200, checkpoints=5)
    assert set(profile.subnormal_steps) <= set(profile.steps)
