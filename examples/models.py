"""Sequence models of the kind a project maintains, each with a gradient-health test in test_gradient_health.py."""

from __future__ import annotations

import torch
from torch import nn


class GRUClassifier(nn.Module):
    """Sequence classifier: a GRU over feature vectors, a linear head on the last hidden state.

    `update_bias` initialises the GRU's update-gate bias: positive values make each step keep more of its state,
    which is what lets the gradient reach early timesteps.
    """

    def __init__(self, features: int = 16, hidden: int = 64, classes: int = 5, update_bias: float = 0.0) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.gru.bias_ih_l0[hidden : 2 * hidden].fill_(update_bias)
            self.gru.bias_hh_l0[hidden : 2 * hidden].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])  # (batch, classes): the probe's loss projects these logits


class TokenLSTM(nn.Module):
    """Language-model style: token ids -> embedding -> LSTM -> next-token logits at every step."""

    def __init__(self, vocab: int = 1000, embed: int = 32, hidden: int = 64, forget_bias: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.lstm.bias_ih_l0[hidden : 2 * hidden].fill_(forget_bias)
            self.lstm.bias_hh_l0[hidden : 2 * hidden].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(self.embed(tokens))[0])  # (batch, seq, vocab)


class ResidualCellLoop(nn.Module):
    """A recurrence written as a Python loop over a cell, with a leaky residual state: h = a*h + (1-a)*cell(x, h)."""

    def __init__(self, features: int = 16, hidden: int = 32, leak: float = 0.9) -> None:
        super().__init__()
        self.cell = nn.RNNCell(features, hidden)
        self.leak = leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        outputs = []
        for t in range(x.shape[1]):
            h = self.leak * h + (1 - self.leak) * self.cell(x[:, t], h)
            outputs.append(h)
        return torch.stack(outputs, 1)
