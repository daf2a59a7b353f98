"""Regressions found in review: layouts, buffers, seeds, metrics at the limits, the fixture with given inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import (
    GradientHealthError,
    GradientProfile,
    InvalidArgumentError,
    ModelForwardError,
    assert_no_vanishing,
    probe,
    reference,
)
from pytest_gradhealth.fixture import GradHealth
from pytest_gradhealth.report.baseline import metric
from pytest_gradhealth.settings import Settings


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_time_major_module_is_probed_in_its_own_layout(cls):
    torch.manual_seed(0)
    time_major = cls(4, 6)  # PyTorch's default: batch_first=False
    batch_major = cls(4, 6, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    a, b = probe(time_major, 12), probe(batch_major, 12)
    assert a.underflow_steps.size == 0
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-5)


def test_an_explicit_layout_wins_and_a_gradient_that_reaches_no_earlier_step_says_so():
    with pytest.raises(GradientHealthError, match="no gradient at all reaches any step before the last.*batch_first"):
        assert_no_vanishing(nn.LSTM(4, 6), 10, batch_first=True)


def test_a_buffer_that_forward_reassigns_is_put_back():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls = self.calls + 1  # a new tensor under the same name
            return self.rnn(x)[0]

    model = Counter()
    original = model.calls
    probe(model, 5)
    assert model.calls is original and model.calls.item() == 0


def test_reference_models_leave_every_cuda_generator_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    reference.lstm(4, 8, seed=3)
    assert calls == []


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_out_of_a_generators_range_is_refused(seed):
    with pytest.raises(InvalidArgumentError, match="seed must be"):
        probe(nn.RNN(3, 4, batch_first=True), 5, seed=seed)


def test_rate_of_an_extreme_profile_is_infinite_not_an_overflow():
    profile = GradientProfile(norms=np.array([1e300, 1e-300]), sample_norms=np.array([[1e300, 1e-300]]), seq_len=2)
    assert profile.rate == math.inf and profile.half_life == math.inf


def test_half_life_beyond_the_sequence_compares_as_the_sequence_length():
    lags = np.arange(99, -1, -1.0)
    slow = GradientProfile(norms=1.001**lags, sample_norms=(1.001**lags)[None], seq_len=100)
    assert slow.half_life == math.inf and metric(slow, "half_life") == 100.0


@pytest.mark.parametrize("key", ["inputs", "lengths"])
def test_the_fixture_takes_the_batch_from_given_inputs(key):
    fixture = GradHealth(Settings(batch_size=8))
    lstm = nn.LSTM(4, 6, batch_first=True)
    options = {"inputs": torch.randn(3, 10, 4)} if key == "inputs" else {"lengths": [10, 6, 2], "measure": "hidden"}
    assert fixture.probe(lstm, 10, **options).batch_size == 3


@pytest.mark.parametrize("role", ["input_fn", "loss_fn"])
def test_a_failing_user_function_is_named(role):
    def broken(*args):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ModelForwardError, match=f"{role} raised ZeroDivisionError: division by zero"):
        probe(nn.RNN(3, 4, batch_first=True), 5, **{role: broken})
