"""What a failing assertion tells the user to do: a remedy measured on a copy of the model, advice by the layers the
model contains (never its class name), and precision notes that tell structure from underflow."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn
from zoo import TCN, RNNCellLoop, seeded

from pytest_gradhealth import assert_memory_horizon, assert_no_vanishing, probe, reference
from pytest_gradhealth.errors import GradientHealthError


def seeded_lstm() -> nn.LSTM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.LSTM(32, 64, batch_first=True)  # PyTorch's default initialisation


def failure(fn, *args, **kwargs) -> str:
    with pytest.raises(GradientHealthError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_a_default_lstm_failing_at_150_steps_is_given_a_measured_fix_that_passes_when_applied(state_guard):
    lstm = state_guard(seeded_lstm())
    message = failure(assert_no_vanishing, lstm, 150, min_ratio=1e-3)
    fix = re.search(r"measured fix: forget-gate bias \+(\d): horizon \d+ -> \d+, rate [\d.]+ -> [\d.]+, ratio", message)
    assert fix, message
    assert "hint:" not in message
    fixed = copy.deepcopy(lstm)
    with torch.no_grad():
        fixed.bias_ih_l0[64:128] += int(fix.group(1))
    assert assert_no_vanishing(fixed, 150, min_ratio=1e-3).ratio >= 1e-3


def test_the_fix_is_the_one_that_passes_the_failing_check_itself():
    message = failure(assert_memory_horizon, seeded_lstm(), 100, min_steps=60)
    (change,) = re.findall(r"measured fix: ([^:]+):", message)
    assert change in ("forget-gate bias +2", "forget-gate bias +3", "chrono initialisation (T_max=100)")


def test_without_a_passing_remedy_the_tried_ones_are_named_and_the_advice_follows():
    message = failure(assert_no_vanishing, reference.rnn(8, 16), 300, min_ratio=0.5)
    assert "measured fix: none of the standard remedies passes (orthogonal weight_hh, each probed on a copy)" in message
    assert "hint: a vanilla RNN keeps a fixed fraction" in message


def test_advice_follows_the_layers_not_the_class_name():
    class RNNModel(nn.Module):  # the name of PyTorch's word-language-model example, which holds an LSTM
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(8, 16, batch_first=True, bias=False)  # no bias: no forget-gate remedy applies

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    message = failure(assert_no_vanishing, RNNModel(), 200, min_ratio=0.9)
    assert "hint: raise the LSTM's forget-gate bias" in message
    assert "vanilla RNN" not in message


def test_structural_zeros_are_not_called_underflow_nor_sent_to_float64():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tcn = TCN()
    message = failure(assert_no_vanishing, tcn, 20, input_size=16)
    assert "no path reaches them" in message
    assert "float64" not in message


def test_underflow_in_float64_is_not_sent_to_float64_again():
    message = failure(assert_no_vanishing, seeded(RNNCellLoop, 32, 64), 1200, dtype=torch.float64)
    assert "underflowed to exactly zero in float64" in message and "shorten seq_len" in message
    assert "dtype=torch.float64" not in message


def test_a_renormalised_profile_says_so_and_shows_the_ratio_below_float64s_range():
    message = failure(assert_no_vanishing, reference.rnn(32, 64), 1200, dtype=torch.float64)
    assert "backward pass renormalised" in message and "underflowed" not in message
    ratio = re.search(r"ratio first/last = (\S+),", message).group(1)
    assert re.fullmatch(r"\d(\.\d+)?e-3\d\d", ratio), ratio  # about 1e-380: a number, not 0


def test_float32_underflow_and_subnormal_steps_point_to_float64():
    message = failure(assert_no_vanishing, seeded(RNNCellLoop, 32, 64), 200)
    assert "underflowed to exactly zero in float32" in message
    assert "subnormal gradient values in float32" in message
    assert message.count("probe with dtype=torch.float64") == 2


def test_float64_gradients_far_below_1e_154_keep_their_norms():
    """Their squares underflow in float64; the norms must not, and the decay stays geometric to 1e-300."""
    profile = probe(reference.rnn(32, 64).double(), 900)
    positive = profile.norms[profile.norms > 0]
    assert positive.min() < 1e-250
    logs = np.log(profile.norms[-len(positive) :])
    steps = np.diff(logs[:-20])  # away from the last steps' start-up
    assert np.all(steps > 0)  # every step nearer the loss holds more gradient: no false zero, no jump
