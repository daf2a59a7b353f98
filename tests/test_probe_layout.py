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


# Where the model's output is not in its input's layout (found by an adversarial review): each of these read the loss
# on the wrong entries before, without a word.


class VocabBeforeTime(nn.Module):
    """Logits (batch, vocab, seq), as nn.CrossEntropyLoss takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.lstm(x)[0]).transpose(1, 2)


class ChannelsFirstToSteps(nn.Module):
    """A channels-first causal convolution (batch, channels, seq) with a per-step head: (batch, seq, classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, 3, padding=2)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.conv(x)[:, :, :-2].transpose(1, 2))


class OneValuePerStep(nn.Module):
    """A forecaster's (batch, seq) output: a one-unit head at every step, squeezed."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0]).squeeze(-1)


class LastState(nn.Module):
    """(batch, hidden): the last hidden state, as many features as the probe's timesteps."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


class FlattenedBatchMajor(nn.Module):
    """A time-major language model whose logits are flattened batch-major, (batch * seq, vocab)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 16)
        self.decoder = nn.Linear(16, 20)

    def forward(self, tokens):
        out = self.rnn(self.embed(tokens))[0].transpose(0, 1).contiguous()
        return self.decoder(out.view(-1, out.shape[-1]))


@pytest.mark.parametrize(
    ("build", "seq_len", "words"),
    [
        (VocabBeforeTime, 30, "axis 2 holds the 30 timesteps"),
        (ChannelsFirstToSteps, 20, "axis 1 holds the 20 timesteps"),
        (OneValuePerStep, 12, r"one value per step \(on one step less the model returns one column less\)"),
        (FlattenedBatchMajor, 12, r"samples \[0, 1, 2, 3, 4, 5, 6\] got no gradient .* its rows are batch-major"),
    ],
)
def test_an_output_in_another_layout_than_the_input_is_refused_naming_loss_fn(build, seq_len, words):
    torch.manual_seed(0)
    model = build().eval()
    with pytest.raises(ModelInterfaceError, match=words) as caught:
        probe(model, seq_len)
    assert "loss_fn=" in str(caught.value)


def test_a_one_value_per_step_output_is_measured_with_the_loss_fn_the_error_names():
    torch.manual_seed(0)
    model = OneValuePerStep().eval()
    x = torch.randn(8, 12, 4, generator=torch.Generator().manual_seed(1))
    profile = probe(model, 12, inputs=x, loss_fn=lambda y: y[:, -1].sum())
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, -1].sum(), leaf)
    expected = grad.double().norm(dim=-1).pow(2).mean(0).sqrt().numpy()
    np.testing.assert_allclose(profile.norms, expected, rtol=1e-5)


def test_as_many_features_as_timesteps_are_still_features():
    """The last state of a layer as wide as the sequence is long keeps its columns on one step less: features, under
    the default loss <v, y> (v the first draw of the seed's generator when the inputs are given)."""
    torch.manual_seed(0)
    model = LastState(12).eval()
    x = torch.randn(8, 12, 4, generator=torch.Generator().manual_seed(1))
    profile = probe(model, 12, inputs=x)
    v = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(leaf) * (v / v.norm()).float()).sum(), leaf)
    np.testing.assert_allclose(profile.norms, grad.double().norm(dim=-1).pow(2).mean(0).sqrt().numpy(), rtol=1e-5)


def test_a_final_state_output_names_loss_fn_beside_the_layouts():
    class FinalState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 8, batch_first=True)

        def forward(self, x):
            return self.gru(x)[1]  # (layers, batch, hidden)

    with pytest.raises(ModelInterfaceError, match="final state .* loss_fn="):
        probe(FinalState(), 10)


def test_a_token_loop_that_reads_the_steps_in_reverse_is_measured_in_time_order():
    """A reversed-source encoder: the lookup of step t is the (seq_len - t)-th call."""

    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.cell = nn.GRUCell(8, 16)
            self.head = nn.Linear(16, 5)

        def forward(self, tokens):
            h = tokens.new_zeros(tokens.shape[0], 16, dtype=torch.float32)
            for t in reversed(range(tokens.shape[1])):
                h = self.cell(self.embed(tokens[:, t]), h)
            return self.head(h)

    torch.manual_seed(0)
    model = Reversed().eval()
    tokens = torch.randint(0, 20, (8, 12), generator=torch.Generator().manual_seed(3))
    profile = probe(model, 12, inputs=tokens, loss_fn=lambda y: y.sum())
    looked_up, h = {}, torch.zeros(8, 16)
    for t in reversed(range(12)):
        looked_up[t] = model.embed(tokens[:, t]).detach().requires_grad_(True)
        h = model.cell(looked_up[t], h)
    grads = torch.autograd.grad(model.head(h).sum(), [looked_up[t] for t in range(12)])
    expected = np.array([g.double().norm(dim=-1).pow(2).mean().sqrt().item() for g in grads])
    np.testing.assert_allclose(profile.norms, expected, rtol=1e-5)


class NextStep(nn.Module):
    """A next-step head: the outputs of steps 1 .. seq_len - 1, as wide as the sequence is long."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, hidden, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0][:, 1:]


class Strided(nn.Module):
    """A stride-2 convolution front end with as many channels as the sequence has steps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, channels, 3, stride=2, padding=1)
        self.rnn = nn.GRU(channels, 8, batch_first=True)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class MaskedFlattened(nn.Module):
    """A batch-first language model that zeroes the states at pad tokens (0) and flattens its logits in its own
    order: a sample whose last token is 0 gets no gradient anywhere, whatever the order of the rows."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 8, padding_idx=0)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.decoder = nn.Linear(8, 4)

    def forward(self, tokens):
        out = self.rnn(self.embed(tokens))[0] * (tokens != 0)[..., None]
        return self.decoder(out.reshape(-1, 8))


@pytest.mark.parametrize(("build", "seq_len"), [(lambda: NextStep(12), 12), (lambda: Strided(16), 16)])
def test_an_axis_as_long_as_the_sequence_that_is_not_time_is_read_as_the_layout_says(build, seq_len):
    """Positive evidence only: on one step less, the axis of seq_len features keeps its length."""
    torch.manual_seed(0)
    probe(build().eval(), seq_len)


def test_a_masked_flattened_output_whose_samples_end_on_padding_is_measured():
    torch.manual_seed(0)
    model = MaskedFlattened().eval()
    for seed in range(6):  # tokens from 4 values: some sample ends on 0 in most draws
        profile = probe(model, 10, seed=seed)
        assert profile.sample_norms.shape == (8, 10)
