"""The registry of module kinds answers from what a model contains, never from its class name."""

from __future__ import annotations

import pytest
from torch import nn

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.engine.taps.cells import CellStatesTap
from pytest_gradhealth.engine.taps.fused import FusedStatesTap


class RNNModel(nn.Module):
    """Named like a vanilla RNN, holds an LSTM (the name of PyTorch's word-language-model example)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(10, 4)
        self.rnn = nn.LSTM(4, 6)
        self.decoder = nn.Linear(6, 10)


@pytest.mark.parametrize(
    ("module", "kind", "tap"),
    [
        (nn.LSTM(2, 3), "LSTM", FusedStatesTap),
        (nn.GRU(2, 3), "GRU", FusedStatesTap),
        (nn.RNN(2, 3), "RNN", FusedStatesTap),
        (nn.RNN(2, 3, nonlinearity="relu"), "RNN (ReLU)", FusedStatesTap),
        (nn.LSTMCell(2, 3), "LSTMCell", CellStatesTap),
        (nn.GRUCell(2, 3), "GRUCell", CellStatesTap),
        (nn.RNNCell(2, 3), "RNNCell", CellStatesTap),
        (nn.Embedding(5, 3), "Embedding", None),
        (nn.Linear(2, 3), "Linear", None),
        (nn.Conv1d(2, 3, 3), "Conv1d", None),
    ],
)
def test_each_builtin_module_has_one_kind_and_its_tap(module, kind, tap):
    found = kinds.kind_of(module)
    assert found is not None and found.name == kind and found.state_tap is tap
    assert [k.name for k in kinds.KINDS if k.matches(module) and k.role != "declared"] == [kind]


def test_a_module_of_the_users_own_that_declares_its_input_size_has_the_catch_all_kind():
    class IndRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_size, self.hidden_size = 3, 7

    found = kinds.kind_of(IndRNN())
    assert found is not None and found.role == "declared" and found is kinds.KINDS[-1]
    assert (found.input_size(IndRNN()), kinds.hidden_size_of(IndRNN())) == (3, 7)


def test_an_unknown_module_has_no_kind():
    assert kinds.kind_of(nn.Conv2d(2, 3, 3)) is None


def test_advice_is_for_the_recurrent_module_the_model_contains_not_its_class_name():
    assert kinds.advice_for(RNNModel()) is not None and "forget-gate bias" in kinds.advice_for(RNNModel())
    assert "vanilla RNN" in kinds.advice_for(nn.Sequential(nn.Linear(2, 2), nn.RNN(2, 3)))
    assert "update gate" in kinds.advice_for(nn.GRUCell(2, 3))


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(2, 2), nn.ReLU()), lambda x: x])
def test_a_model_without_a_recurrent_module_gets_no_advice(model):
    assert kinds.advice_for(model) is None


def test_sizes_are_read_from_the_modules():
    model = RNNModel()
    first, kind = kinds.first_input_module(model)
    assert first is model.encoder and kind.vocab_size(first) == 10
    assert kinds.hidden_size_of(model) == 6
    assert kinds.embedding_of(model) is model.encoder
    assert kinds.layout_of(model) == "time-batch-feature"
