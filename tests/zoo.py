"""A zoo of sequence models written the way published code writes them, for the probe to fit without arguments.

Each is this project's own definition in a well-known style: PyTorch-example word language models with
`init_hidden`, an AWD-style LSTM with weight drop and embedding dropout, Transformer encoders of both layouts, an
IndRNN-style module of the user's own, an orthogonal cell loop, a TCN, a seq2seq model, a bidirectional encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, weight_norm

VOCAB, EMBED, HIDDEN = 50, 16, 24


def seeded(cls: type[nn.Module], *args, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


class RNNModel(nn.Module):
    """Word language model, PyTorch-example style: time-major LSTM, forward(input, hidden), flattened logits."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(VOCAB, EMBED)
        self.rnn = nn.LSTM(EMBED, HIDDEN, 2, dropout=0.2)
        self.decoder = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, VOCAB)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = next(self.parameters())
        return weight.new_zeros(2, bsz, HIDDEN), weight.new_zeros(2, bsz, HIDDEN)


class BatchFirstGRULM(nn.Module):
    """A stateful batch-first GRU language model that flattens its logits to (batch * seq, vocab)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor):
        output, state = self.gru(self.embed(tokens), state)
        return self.out(output).reshape(-1, VOCAB), state

    def init_hidden(self, batch: int) -> torch.Tensor:
        return torch.zeros(1, batch, HIDDEN, device=self.out.weight.device, dtype=self.out.weight.dtype)


class DropConnect(nn.Module):
    """Weight drop as a parametrization: a dropout mask on the recurrent weight in training, identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return F.dropout(weight, self.p, self.training)


def embedded_dropout(embed: nn.Embedding, words: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
    """Drop whole words of the vocabulary, then look up through F.embedding with the masked weight."""
    weight = embed.weight
    if training and dropout:
        mask = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - dropout) / (1 - dropout)
        weight = mask * weight
    return F.embedding(words, weight, embed.padding_idx, embed.max_norm, embed.norm_type)


class AWDLSTM(nn.Module):
    """AWD-style: three single-layer LSTMs with weight drop, embedding dropout, forward(input, hidden)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, EMBED)
        sizes = [EMBED, HIDDEN, HIDDEN, EMBED]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(3))
        for rnn in self.rnns:
            parametrize.register_parametrization(rnn, "weight_hh_l0", DropConnect(0.5))
        self.decoder = nn.Linear(EMBED, VOCAB)
        self.decoder.weight = self.encoder.weight  # tied

    def forward(self, input: torch.Tensor, hidden: list):
        output = embedded_dropout(self.encoder, input, 0.1, self.training)
        new_hidden = []
        for rnn, h in zip(self.rnns, hidden, strict=True):
            output, h = rnn(output, h)
            new_hidden.append(h)
        return self.decoder(output).view(-1, VOCAB), new_hidden

    def init_hidden(self, bsz: int) -> list:
        weight = self.encoder.weight
        sizes = [HIDDEN, HIDDEN, EMBED]
        return [(weight.new_zeros(1, bsz, n), weight.new_zeros(1, bsz, n)) for n in sizes]


class PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div)
        pe[:, 0, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(0)]


class TransformerLM(nn.Module):
    """Time-major Transformer language model, PyTorch-example style: its embedding is registered after the encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(EMBED)
        layer = nn.TransformerEncoderLayer(EMBED, 2, 32, dropout=0.1)
        self.transformer_encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.encoder = nn.Embedding(VOCAB, EMBED)
        self.decoder = nn.Linear(EMBED, VOCAB)

    def forward(self, src: torch.Tensor, has_mask: bool = True) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(len(src)) if has_mask else None
        src = self.pos_encoder(self.encoder(src) * math.sqrt(EMBED))
        return F.log_softmax(self.decoder(self.transformer_encoder(src, mask)), dim=-1)


class BatchFirstEncoder(nn.Module):
    """A batch-first Transformer encoder over float features, causal."""

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.project = nn.Linear(features, EMBED)
        layer = nn.TransformerEncoderLayer(EMBED, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.encoder(self.project(x), mask=mask, is_causal=True)


class IndRNN(nn.Module):
    """IndRNN style: a recurrent module of the user's own with input_size and batch_first attributes (time-major)."""

    def __init__(self, input_size: int = 8, hidden_size: int = HIDDEN, batch_first: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))
        self.weight_hh = nn.Parameter(torch.rand(hidden_size) * 0.5 + 0.5)  # one recurrent weight per unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            x = x.transpose(0, 1)
        h, outputs = x.new_zeros(x.shape[1], self.hidden_size), []
        for x_t in x:
            h = torch.relu(x_t @ self.weight_ih.T + self.weight_hh * h)
            outputs.append(h)
        out = torch.stack(outputs)
        return out.transpose(0, 1) if self.batch_first else out


class IndRNNClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(HIDDEN, 5)  # registered first: it does not receive the input
        self.core = IndRNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.core(x)[-1])


class OrthogonalRNN(nn.Module):
    """A cell loop whose recurrent matrix is kept orthogonal by a parametrization (expRNN style), batch-first."""

    def __init__(self, input_size: int = 6) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, HIDDEN)
        self.recurrent = orthogonal(nn.Linear(HIDDEN, HIDDEN, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, outputs = x.new_zeros(x.shape[0], HIDDEN), []
        for t in range(x.shape[1]):
            h = torch.tanh(self.input(x[:, t]) + self.recurrent(h))
            outputs.append(h)
        return torch.stack(outputs, 1)


class RNNCellLoop(nn.Module):
    """A tanh RNN written as a loop over nn.RNNCell, batch-first: its steps meet in the user's loop, where the probe
    cannot renormalise its backward pass, so a gradient that leaves the dtype's range stays flagged as such."""

    def __init__(self, input_size: int = 4, hidden_size: int = 64) -> None:
        super().__init__()
        self.cell = nn.RNNCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h


class Chomp(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.size]


class TCN(nn.Module):
    """A temporal convolutional network: causal dilated weight-normed Conv1d blocks over (batch, channels, time)."""

    def __init__(self, channels: int = 16, levels: int = 3, kernel: int = 2) -> None:
        super().__init__()
        blocks, width = [], channels
        for level in range(levels):
            dilation = 2**level
            padding = (kernel - 1) * dilation
            conv = weight_norm(nn.Conv1d(width, 32, kernel, padding=padding, dilation=dilation))
            blocks += [conv, Chomp(padding), nn.Tanh()]
            width = 32
        self.network = nn.Sequential(*blocks)
        self.linear = nn.Linear(32, 4)
        self.receptive_field = 1 + (kernel - 1) * (2**levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.network(x)[:, :, -1])


class Seq2Seq(nn.Module):
    """A GRU encoder and a GRUCell decoder that runs a fixed number of steps from the encoder's final state."""

    def __init__(self, input_size: int = 6, steps: int = 4) -> None:
        super().__init__()
        self.encoder = nn.GRU(input_size, HIDDEN, batch_first=True)
        self.decoder = nn.GRUCell(3, HIDDEN)
        self.readout = nn.Linear(HIDDEN, 3)
        self.steps = steps

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        _, h = self.encoder(src)
        h, y, outputs = h[0], src.new_zeros(src.shape[0], 3), []
        for _ in range(self.steps):
            h = self.decoder(y, h)
            y = self.readout(h)
            outputs.append(y)
        return torch.stack(outputs, 1)


class BiEncoder(nn.Module):
    """A bidirectional LSTM encoder with a linear head, batch-first."""

    def __init__(self, input_size: int = 6) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, HIDDEN, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


class StatefulGRU(nn.Module):
    """forward(x, h0) with no init_hidden: the probe passes None, which nn.GRU reads as zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, HIDDEN, batch_first=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        return self.gru(x, h0)[0]


class Masked(nn.Module):
    """forward(x, mask) that cannot take None: only forward= can call it."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, HIDDEN, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.gru(x * mask[..., None])[0]
