"""The ways inputs reach the model: random floats, given tensors, input_fn, tokens, time-major, cell loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe


class PerStepTokens(nn.Module):
    """Calls its embedding once per timestep, as a decoder loop does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 4)
        self.cell = nn.GRUCell(4, 6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed.weight.new_zeros(tokens.shape[0], 6)
        for t in range(tokens.shape[1]):
            h = self.cell(self.embed(tokens[:, t]), h)
        return h


def test_token_model_measured_per_step_equals_whole_sequence_embedding():
    # The same weights in a per-step loop and in a fused GRU give the same profile.
    loop = PerStepTokens().double()
    fused = nn.GRU(4, 6, batch_first=True).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(fused, f"{name}_l0").copy_(getattr(loop.cell, name))

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.gru = loop.embed, fused

        def forward(self, tokens):
            return self.gru(self.embed(tokens))[0]

    a = probe(loop, 10, seed=2)
    b = probe(Fused(), 10, seed=2)
    assert a.inputs == b.inputs == "tokens"
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-12)


def test_vocab_size_inferred_from_a_leading_embedding():
    model = nn.Sequential(nn.Embedding(7, 3), nn.LSTM(3, 4, batch_first=True))
    assert probe(model, 6).inputs == "tokens"


def test_given_inputs_are_used_as_they_are_and_not_modified():
    model = nn.GRU(3, 4, batch_first=True).double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    kept = x.clone()
    profile = probe(model, 6, inputs=x)
    assert torch.equal(x, kept) and not x.requires_grad
    assert profile.batch_size == 5


def test_input_fn_receives_batch_seq_len_and_the_seeded_generator():
    seen = []

    def input_fn(batch, seq_len, generator):
        seen.append((batch, seq_len, generator.initial_seed()))
        return torch.randn(batch, seq_len, 3, generator=generator)

    probe(nn.RNN(3, 4, batch_first=True), 5, batch_size=2, seed=9, input_fn=input_fn)
    assert seen == [(2, 5, 9)]


def test_cell_loop_model_infers_input_size_from_its_cell():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.RNNCell(5, 8)

        def forward(self, x):
            h = x.new_zeros(x.shape[0], 8)
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
            return h

    profile = probe(Loop(), 12)
    assert profile.norms.shape == (12,) and (profile.norms > 0).all()


def test_tuple_output_first_element_is_used():
    # nn.LSTM returns (output, (h, c)); the same model wrapped to return only output gives the same profile.
    lstm = nn.LSTM(3, 4, batch_first=True)
    np.testing.assert_array_equal(probe(lstm, 6).norms, probe(lambda x: lstm(x)[0], 6, input_size=3).norms)


@pytest.mark.parametrize("batch_first", [True, False])
def test_custom_loss_fn_replaces_the_projection(batch_first):
    rnn = nn.RNN(3, 4, batch_first=batch_first)
    profile = probe(rnn, 6, batch_first=batch_first, loss_fn=lambda out: out[0].pow(2).sum())
    assert profile.norms.shape == (6,)


class PositionsFirst(nn.Module):
    """A GPT-style token model whose position table is registered before its token table."""

    def __init__(self, vocab: int, max_len: int) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_len, 8)
        self.tokens = nn.Embedding(vocab, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)

    def forward(self, idx):
        return self.rnn(self.tokens(idx) + self.positions(torch.arange(idx.shape[1])))[0]


@pytest.mark.parametrize(("vocab", "max_len"), [(50, 32), (20, 128)])
def test_tokens_are_drawn_from_the_table_that_looks_them_up(vocab, max_len):
    """Inferred from the first embedding, the vocabulary was the positions' (tokens from too few, or an index error):
    the pass that finds the tokens' own table draws again from its size."""
    torch.manual_seed(0)
    model = PositionsFirst(vocab, max_len).eval()
    profile = probe(model, 12)
    assert profile.inputs == "tokens"
    np.testing.assert_array_equal(profile.norms, probe(model, 12, vocab_size=vocab).norms)  # as if it were given
    together = probe(model, 12, seeds=2)  # seed by seed: the batched pass would draw before finding the table
    np.testing.assert_array_equal(together.seed_profiles[1].norms, probe(model, 12, seed=1).norms)


class RecurrentFirst(nn.Module):
    """The recurrent layer registered first, then the position table, then the token table."""

    def __init__(self, vocab: int, max_len: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.positions = nn.Embedding(max_len, 8)
        self.tokens = nn.Embedding(vocab, 8)

    def forward(self, idx):
        return self.rnn(self.tokens(idx) + self.positions(torch.arange(idx.shape[1])))[0]


@pytest.mark.parametrize(("vocab", "max_len"), [(50, 32), (20, 128)])
def test_tokens_found_after_float_inputs_failed_are_drawn_from_the_table_that_looks_them_up(vocab, max_len):
    torch.manual_seed(0)
    model = RecurrentFirst(vocab, max_len).eval()
    np.testing.assert_array_equal(probe(model, 12).norms, probe(model, 12, vocab_size=vocab).norms)
