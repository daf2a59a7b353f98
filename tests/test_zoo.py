"""Real models out of the box: each zoo model probed with no arguments gives what a hand-written call gives, and the
verdict that call gives; where no argument can be guessed, the error names the one to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from zoo import (
    AWDLSTM,
    HIDDEN,
    TCN,
    VOCAB,
    BatchFirstEncoder,
    BatchFirstGRULM,
    BiEncoder,
    IndRNNClassifier,
    Masked,
    OrthogonalRNN,
    RNNModel,
    Seq2Seq,
    StatefulGRU,
    TransformerLM,
    seeded,
)

from pytest_gradhealth import ModelForwardError, ModelInterfaceError, probe

T = 20
MIN_RATIO = 1e-3  # assert_no_vanishing's default


def with_state(model: nn.Module, x: torch.Tensor, batch_axis: int) -> torch.Tensor:
    """The hand-written call of a stateful language model: its initial state, its logits unflattened."""
    batch = x.shape[batch_axis]
    logits = model(x, model.init_hidden(batch))[0]
    return logits.view(*((T, batch) if batch_axis == 1 else (batch, T)), -1)


# model, the arguments a user who knows the model would write, the verdict at seq_len=T (vanishing below MIN_RATIO)
ZOO = {
    "word LM (time-major LSTM, init_hidden, flattened)": (
        RNNModel,
        {"vocab_size": VOCAB, "layout": "time-batch-feature", "forward": lambda m, x: with_state(m, x, 1)},
        "vanishing",
    ),
    "batch-first GRU LM (init_hidden, flattened)": (
        BatchFirstGRULM,
        {"vocab_size": VOCAB, "layout": "batch-time-feature", "forward": lambda m, x: with_state(m, x, 0)},
        "vanishing",
    ),
    "AWD-style LSTM (weight drop, F.embedding dropout)": (
        AWDLSTM,
        {"vocab_size": VOCAB, "layout": "time-batch-feature", "forward": lambda m, x: with_state(m, x, 1)},
        "ok",
    ),
    "Transformer LM (time-major, embedding registered late)": (
        TransformerLM,
        {"vocab_size": VOCAB, "layout": "time-batch-feature"},
        "ok",
    ),
    "Transformer encoder (batch-first, causal)": (BatchFirstEncoder, {"input_size": 6, "batch_first": True}, "ok"),
    "IndRNN-style module (input_size, batch_first=False)": (
        IndRNNClassifier,
        {"input_size": 8, "layout": "time-batch-feature"},
        "ok",
    ),
    "orthogonal cell loop": (OrthogonalRNN, {"input_size": 6, "batch_first": True}, "ok"),
    "TCN (channels-first, weight norm)": (TCN, {"input_size": 16, "layout": "batch-feature-time"}, "vanishing"),
    "seq2seq (GRU encoder, GRUCell decoder)": (Seq2Seq, {"input_size": 6, "batch_first": True}, "vanishing"),
    "bidirectional LSTM encoder": (BiEncoder, {"input_size": 6, "batch_first": True}, "vanishing"),
    "forward(x, h0) without init_hidden": (StatefulGRU, {"forward": lambda m, x: m(x, None)}, "vanishing"),
}


@pytest.mark.parametrize("name", ZOO)
def test_a_zoo_model_probed_with_no_arguments_is_measured_as_written_by_hand(name):
    cls, by_hand, verdict = ZOO[name]
    auto, truth = probe(seeded(cls), T), probe(seeded(cls), T, **by_hand)
    np.testing.assert_array_equal(auto.norms, truth.norms)
    assert (auto.inputs, auto.input_size) == (truth.inputs, truth.input_size)
    assert ("vanishing" if auto.ratio < MIN_RATIO else "ok") == verdict


def test_the_tcns_exact_zeros_are_its_receptive_field():
    model = seeded(TCN)
    profile = probe(model, T)
    assert (profile.norms[: T - model.receptive_field] == 0).all()
    assert (profile.norms[T - model.receptive_field :] > 0).all()


@pytest.mark.parametrize(
    ("cls", "wrong", "words"),
    [
        (TransformerLM, {"vocab_size": VOCAB, "layout": "batch-time-feature"}, "pass layout='time-batch-feature'"),
        (IndRNNClassifier, {"batch_first": True}, "pass layout='time-batch-feature'"),
        (RNNModel, {"batch_first": True}, r"Expected hidden\[0\] size .* Pass input_size=, layout="),
    ],
)
def test_a_wrong_layout_is_an_error_naming_layout_never_a_verdict(cls, wrong, words):
    with pytest.raises(ModelInterfaceError, match=words):
        probe(seeded(cls), T, **wrong)


def test_a_forward_that_cannot_take_none_names_forward():
    with pytest.raises(ModelForwardError, match=r"pass forward=lambda model, x: model\(x, \.\.\.\)"):
        probe(seeded(Masked), T)
    profile = probe(seeded(Masked), T, forward=lambda m, x: m(x, torch.ones(x.shape[:2])))
    assert profile.norms[0] > 0


def test_an_embedding_fed_floats_names_vocab_size_when_it_cannot_be_found():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(VOCAB, 4))
            self.rnn = nn.GRU(4, HIDDEN, batch_first=True)

        def forward(self, x):
            return self.rnn(nn.functional.embedding(x, self.table))[0]

    with pytest.raises(ModelInterfaceError, match="pass vocab_size="):
        probe(Functional(), T)
    assert probe(Functional(), T, vocab_size=VOCAB).inputs == "tokens"


def test_a_compiled_model_is_probed_like_the_model():
    model = seeded(OrthogonalRNN)
    try:
        compiled = torch.compile(model)
        compiled(torch.zeros(2, 3, 6))
    except Exception as exc:  # no C compiler or no inductor support on this machine
        pytest.skip(f"torch.compile does not run here: {type(exc).__name__}: {str(exc)[:120]}")
    np.testing.assert_allclose(probe(compiled, 8).norms, probe(model, 8).norms, rtol=1e-5)


def test_weight_drop_and_embedding_dropout_run_seeded_in_train_mode():
    first = probe(seeded(AWDLSTM), T, mode="train", seed=3)
    np.testing.assert_array_equal(first.norms, probe(seeded(AWDLSTM), T, mode="train", seed=3).norms)
    assert not np.array_equal(first.norms, probe(seeded(AWDLSTM), T).norms)


def test_a_failing_init_hidden_names_forward():
    class Broken(RNNModel):
        def init_hidden(self, bsz):
            raise RuntimeError("needs a device")

    with pytest.raises(
        ModelForwardError, match=r"init_hidden\(8\), which raised RuntimeError: needs a device.*forward="
    ):
        probe(seeded(Broken), T)


def test_forward_must_be_callable():
    from pytest_gradhealth import InvalidArgumentTypeError

    with pytest.raises(InvalidArgumentTypeError, match="forward must be callable"):
        probe(seeded(StatefulGRU), T, forward="model(x, None)")


@pytest.mark.parametrize(("cls", "options"), [(RNNModel, {}), (AWDLSTM, {"module": "rnns.2"})])
def test_hidden_states_of_stateful_language_models_are_measured_from_their_init_hidden(cls, options):
    profile = probe(seeded(cls), T, measure="hidden", **options)
    by_hand = probe(
        seeded(cls), T, measure="hidden", vocab_size=VOCAB, forward=lambda m, x: with_state(m, x, 1), **options
    )
    np.testing.assert_array_equal(profile.norms, by_hand.norms)
    assert (profile.norms > 0).all()
