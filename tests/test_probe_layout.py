"""The layout the probe feeds a model: the model's own, or the one asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import (
    GradientHealthError,
    InvalidArgumentError,
    ModelInterfaceError,
    assert_no_vanishing,
    probe,
)


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_time_major_module_is_probed_in_its_own_layout(cls):
    torch.manual_seed(0)
    time_major = cls(4, 6)  # PyTorch's default: batch_first=False
    batch_major = cls(4, 6, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    a, b = probe(time_major, 12), probe(batch_major, 12)
    assert a.underflow_steps.size == 0
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-5)


def test_a_layout_in_which_no_gradient_reaches_an_earlier_step_names_the_one_that_connects():
    # The LSTM is time-major; probed batch-first, each of the probe's timesteps is a separate sample to it.
    with pytest.raises(ModelInterfaceError, match=r"pass layout='time-batch-feature' \(batch_first=False\)"):
        probe(nn.LSTM(4, 6), 10, batch_first=True)


def test_a_memoryless_model_is_not_a_layout_mismatch():
    per_step = nn.Sequential(nn.Linear(4, 6), nn.Tanh())  # the last output reads only the last input, in any layout
    profile = probe(per_step, 10)
    assert (profile.norms[:-1] == 0).all() and profile.norms[-1] > 0
    with pytest.raises(GradientHealthError, match="no gradient at all reaches any step before the last"):
        assert_no_vanishing(per_step, 10)


class TimeMajorCore(nn.Module):
    """A recurrent module of the user's own that declares its layout the way nn.RNN does (IndRNN style)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, False
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) / input_size**0.5)
        self.weight_hh = nn.Parameter(torch.full((hidden_size,), 0.8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = x.new_zeros(x.shape[1], self.hidden_size), []
        for x_t in x:
            h = torch.relu(x_t @ self.weight_ih.T + self.weight_hh * h)
            out.append(h)
        return torch.stack(out)


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.core = TimeMajorCore(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.core(x))


def test_the_layout_is_read_from_any_submodule_that_declares_batch_first():
    profile = probe(Wrapped(), 12)
    assert profile.input_size == 4  # from the core's input_size attribute, not the head's Linear
    explicit = probe(Wrapped(), 12, layout="time-batch-feature")
    np.testing.assert_array_equal(profile.norms, explicit.norms)
    assert (profile.norms[:-1] > 0).all()


@pytest.mark.parametrize("layer", [nn.TransformerEncoderLayer, nn.MultiheadAttention])
def test_attention_modules_declare_their_layout(layer):
    from pytest_gradhealth.engine.kinds import layout_of

    module = layer(8, 2) if layer is nn.MultiheadAttention else layer(8, 2, 16)
    assert layout_of(module) == "time-batch-feature"
    module = layer(8, 2, batch_first=True) if layer is nn.MultiheadAttention else layer(8, 2, 16, batch_first=True)
    assert layout_of(module) == "batch-time-feature"


class ChannelsFirst(nn.Module):
    """A causal convolution over (batch, channels, time), as a TCN block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(3, 5, kernel_size=2, dilation=1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.conv(nn.functional.pad(x, (1, 0))))
        return self.head(y[:, :, -1])


def test_a_channels_first_convolution_is_probed_in_its_layout():
    profile = probe(ChannelsFirst(), 6)
    assert profile.input_size == 3
    # Kernel 2: the last output reads the last two steps only; the earlier ones get exactly no gradient.
    assert profile.norms[-1] > 0 and profile.norms[-2] > 0 and (profile.norms[:-2] == 0).all()
    x = torch.randn(8, 6, 3, generator=torch.Generator().manual_seed(0))
    given = probe(ChannelsFirst(), 6, inputs=x.transpose(1, 2), layout="batch-feature-time")
    assert given.norms.shape == (6,) and given.norms[-1] > 0


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"layout": "feature-first"}, "layout must be one of"),
        ({"layout": "time-batch-feature", "batch_first": True}, "contradicts"),
    ],
)
def test_a_bad_layout_is_refused(options, words):
    with pytest.raises(InvalidArgumentError, match=words):
        probe(nn.RNN(3, 4), 5, **options)
