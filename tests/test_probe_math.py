"""Profiles checked against closed forms from the recurrence equations, in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe

REL = 1e-9


def relu_rnn(a: float | list[float], size: int = 4, batch_first: bool = True) -> nn.RNN:
    """h_t = relu(x_t + diag(a) h_{t-1}): with positive inputs every unit stays linear."""
    rnn = nn.RNN(size, size, nonlinearity="relu", batch_first=batch_first).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(size, dtype=torch.float64))
        diag = (
            torch.full((size,), a, dtype=torch.float64)
            if isinstance(a, float)
            else torch.tensor(a, dtype=torch.float64)
        )
        rnn.weight_hh_l0.copy_(torch.diag(diag))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def positive_inputs(batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, seq_len, 4, generator=gen, dtype=torch.float64) + 0.1


@pytest.mark.parametrize("a", [0.9, 1.0, 1.05])
def test_relu_rnn_with_scaled_identity_decays_exactly_as_a_to_the_lag(a):
    seq_len = 60
    profile = probe(relu_rnn(a), seq_len, input_fn=positive_inputs)
    lags = np.arange(seq_len - 1, -1, -1)
    np.testing.assert_allclose(profile.norms / profile.norms[-1], a**lags, rtol=REL)
    assert profile.rate == pytest.approx(a, rel=REL)
    assert profile.ratio == pytest.approx(a ** (seq_len - 1), rel=REL)


def test_last_step_norm_is_the_norm_of_the_unit_projection():
    # dL/dx_T = v for every sample, and v is a unit vector: norms[-1] is exactly 1.
    profile = probe(relu_rnn(0.9), 10, input_fn=positive_inputs)
    assert profile.norms[-1] == pytest.approx(1.0, rel=REL)
    np.testing.assert_allclose(profile.sample_norms[:, -1], 1.0, rtol=REL)


def test_the_default_loss_is_the_sum_over_the_batch_of_v_dot_the_last_output():
    # The probe starts the backward pass from v at each y_T, without computing the loss: the same gradients, bit for
    # bit, as the loss itself. With inputs given, v is the first draw of the generator seeded with `seed`.
    torch.manual_seed(0)
    lstm, seq_len = nn.LSTM(4, 6, batch_first=True), 12
    x = torch.randn(8, seq_len, 4)
    v = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = (v / v.norm()).float()
    default = probe(lstm, seq_len, inputs=x, seed=3)
    explicit = probe(lstm, seq_len, inputs=x, seed=3, loss_fn=lambda out: (out[0][:, -1] * v).sum())
    np.testing.assert_array_equal(default.sample_norms, explicit.sample_norms)


def test_time_major_layout_gives_the_same_exact_decay():
    def time_major(batch, seq_len, gen):
        return positive_inputs(batch, seq_len, gen).transpose(0, 1).contiguous()

    profile = probe(relu_rnn(0.8, batch_first=False), 30, input_fn=time_major, batch_first=False)
    assert profile.rate == pytest.approx(0.8, rel=REL)
    assert profile.ratio == pytest.approx(0.8**29, rel=REL)


def test_diagonal_recurrence_norm_is_the_weighted_sum_of_per_unit_powers():
    # dL/dx_t = diag(a)^k v, so norms[t] = sqrt(sum_i a_i^(2k) v_i^2) with v the probe's unit vector,
    # recovered from the last step's gradient (k = 0).
    a = np.array([0.5, 0.7, 0.9, 0.99])
    seq_len = 40
    profile = probe(relu_rnn(a.tolist()), seq_len, batch_size=1, input_fn=positive_inputs, loss_fn=None)
    probe_v = _unit_vector_of(seq_len, seed=0)
    k = np.arange(seq_len - 1, -1, -1)[:, None]
    expected = np.sqrt(((a[None, :] ** k * probe_v[None, :]) ** 2).sum(1))
    np.testing.assert_allclose(profile.norms, expected, rtol=REL)
    # The slowest unit dominates the far past: the local per-step factor tends to max(a).
    assert profile.norms[0] / profile.norms[1] == pytest.approx(0.99, rel=1e-3)


def _unit_vector_of(seq_len: int, seed: int) -> np.ndarray:
    """The projection vector the probe draws: after the inputs from the same generator."""
    gen = torch.Generator().manual_seed(seed)
    positive_inputs(1, seq_len, gen)
    v = torch.randn(4, generator=gen, dtype=torch.float64)
    return (v / v.norm()).numpy()


def test_gru_with_constant_update_gate_decays_as_the_gate():
    # W_hh = 0 and W_iz = 0: z = sigmoid(b_z) for every step, h_t = (1 - z) n(x_t) + z h_{t-1}.
    # With the same input at every step, dL/dx_t = z^(T-t) (1 - z) W_in^T (tanh'(.) v): ratio z^(T-1) exactly.
    size, b_z = 3, 1.3
    gru = nn.GRU(size, size, batch_first=True).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.weight_ih_l0[2 * size :].copy_(torch.randn(size, size, generator=torch.Generator().manual_seed(1)))
        gru.bias_ih_l0[size : 2 * size].fill_(b_z)
    z = 1 / (1 + math.exp(-b_z))

    def constant(batch, seq_len, gen):
        return torch.randn(batch, 1, size, generator=gen, dtype=torch.float64).expand(batch, seq_len, size)

    profile = probe(gru, 25, input_fn=constant)
    assert profile.rate == pytest.approx(z, rel=REL)
    assert profile.ratio == pytest.approx(z**24, rel=REL)


def constant_forget_lstm(forget_bias: float, size: int = 3) -> nn.LSTM:
    """Only the candidate gate sees the input (weight_ih rows 2H:3H), W_hh = 0: f = sigmoid(b_f) is constant."""
    lstm = nn.LSTM(size, size, batch_first=True).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.weight_ih_l0[2 * size : 3 * size].copy_(torch.eye(size))
        lstm.bias_ih_l0[size : 2 * size].fill_(forget_bias)
    return lstm


def constant_input(batch: int, seq_len: int, gen: torch.Generator, size: int = 3) -> torch.Tensor:
    """The same N(0, 1) input at every step of each sample."""
    return torch.randn(batch, 1, size, generator=gen, dtype=torch.float64).expand(batch, seq_len, size)


@pytest.mark.parametrize("forget_bias", [0.0, 2.0, 5.0])
def test_lstm_with_constant_forget_gate_decays_as_sigmoid_of_its_bias(forget_bias):
    # Only the candidate gate sees the input (weight_ih rows 2H:3H), W_hh = 0: f = sigmoid(b_f) is constant and
    # c_t = f c_{t-1} + i g(x_t). With the same input every step, dL/dx_t is f^(T-t) times a fixed vector.
    lstm = constant_forget_lstm(forget_bias)
    f = 1 / (1 + math.exp(-forget_bias))
    profile = probe(lstm, 30, input_fn=constant_input)
    lags = np.arange(29, -1, -1)
    np.testing.assert_allclose(profile.norms / profile.norms[-1], f**lags, rtol=REL)
    assert profile.rate == pytest.approx(f, rel=REL)
    assert profile.half_life == pytest.approx(math.log(2) / -math.log(f), rel=REL)


class ScalarLinearRecurrence(nn.Module):
    """h_t = a*h_{t-1} + x_t, output h: the textbook case, with no nonlinearity at all."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(x[:, 0])
        outputs = []
        for t in range(x.shape[1]):
            h = self.a * h + x[:, t]
            outputs.append(h)
        return torch.stack(outputs, 1)


@pytest.mark.parametrize("a", [0.5, -0.8, 1.2])
def test_linear_recurrence_rate_is_abs_a_for_any_inputs(a):
    profile = probe(ScalarLinearRecurrence(a), 20, input_size=5, dtype=torch.float64)
    assert profile.rate == pytest.approx(abs(a), rel=REL)
    # |a|^k >= 0.01 for k <= log(0.01)/log|a|; the horizon is capped at seq_len - 1.
    expected = min(math.floor(math.log(0.01) / math.log(abs(a))), 19) if abs(a) < 1 else 19
    assert profile.horizon(0.01) == expected
