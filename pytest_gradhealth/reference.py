"""Reference models: the recurrent architectures whose gradient flow is well known, seeded and batch-first.

Each takes input (batch, seq, input_size) and returns output (batch, seq, hidden_size). Weights use PyTorch's
default initialisation drawn under `seed` (the global random state is left as it was), so two calls with the same
arguments give identical models. Probe them beside your model to see where it stands.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytest_gradhealth.errors import InvalidArgumentTypeError


class _Reference(nn.Module):
    """A fused recurrent module that returns only its output sequence."""

    def __init__(self, core: nn.RNNBase) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x)[0]


class ReferenceRNN(_Reference):
    """Vanilla (Elman) RNN."""


class ReferenceLSTM(_Reference):
    """LSTM."""


class ReferenceGRU(_Reference):
    """GRU."""


def _seeded(seed: int, build: type[nn.RNNBase], **kwargs: Any) -> nn.RNNBase:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentTypeError(f"seed must be an int, got {type(seed).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would also reseed CUDA, which fork_rng([]) keeps
        return build(batch_first=True, **kwargs)


def rnn(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    nonlinearity: str = "tanh",
    dropout: float = 0.0,
    seed: int = 0,
) -> ReferenceRNN:
    """A vanilla RNN, h_t = tanh(W x_t + U h_{t-1} + b).

    At PyTorch's default initialisation it keeps about half of its gradient per step (rate ~0.5 at hidden 64):
    a hundred steps back, some thirty orders of magnitude are gone.
    """
    core = _seeded(
        seed,
        nn.RNN,
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        nonlinearity=nonlinearity,
        dropout=dropout,
    )
    return ReferenceRNN(core)


def lstm(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    forget_bias: float | None = None,
    dropout: float = 0.0,
    seed: int = 0,
) -> ReferenceLSTM:
    """An LSTM; `forget_bias` sets every layer's forget-gate bias (b_ih[H:2H] = forget_bias, b_hh[H:2H] = 0).

    At PyTorch's default initialisation (forget_bias=None) its gradient decays almost as fast as a vanilla RNN's.
    With a forget-gate bias of 2 or more the cell state carries the gradient across a hundred steps; it still
    fades over long enough sequences.
    """
    core = _seeded(
        seed, nn.LSTM, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout
    )
    if forget_bias is not None:
        with torch.no_grad():
            for layer in range(num_layers):
                getattr(core, f"bias_ih_l{layer}")[hidden_size : 2 * hidden_size].fill_(forget_bias)
                getattr(core, f"bias_hh_l{layer}")[hidden_size : 2 * hidden_size].zero_()
    return ReferenceLSTM(core)


def gru(input_size: int, hidden_size: int, num_layers: int = 1, *, dropout: float = 0.0, seed: int = 0) -> ReferenceGRU:
    """A GRU. At PyTorch's default initialisation its update gate lets the gradient decay about as fast as an
    LSTM's at default initialisation."""
    core = _seeded(seed, nn.GRU, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
    return ReferenceGRU(core)
