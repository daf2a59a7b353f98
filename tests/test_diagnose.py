"""diagnose(): gate statistics and memory timescales read along the probe's trajectory, checked where the mathematics
is exact (constant gates, a scaled-identity ReLU recurrence), and measured remedies that equal separately modified
and probed copies."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe, reference
from pytest_gradhealth.diagnosing import _chrono, _replay, diagnose
from pytest_gradhealth.diagnosis import Diagnosis
from pytest_gradhealth.errors import InvalidArgumentTypeError


def constant_gates(module: nn.Module, blocks: tuple[int, ...], seed: int = 0) -> None:
    """Zero the input and recurrent weights of the given gate blocks, and give their biases spread-out values."""
    generator = torch.Generator().manual_seed(seed)
    h = module.hidden_size
    with torch.no_grad():
        for name, p in module.named_parameters():
            for b in blocks:
                rows = slice(b * h, (b + 1) * h)
                if name.startswith("weight"):
                    p[rows] = 0
                elif name.startswith("bias_ih"):
                    p[rows] = 4 * torch.rand(h, generator=generator, dtype=p.dtype) - 1
                else:
                    p[rows] = 0


def sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x.detach().double()).numpy()


def test_an_lstm_with_constant_gates_has_the_exact_timescale_of_each_unit(state_guard):
    lstm = nn.LSTM(6, 12, batch_first=True).double()
    constant_gates(lstm, (0, 1, 3))  # i, f, o constant; the candidate g still reads the input
    state_guard(lstm)
    d = diagnose(lstm, 20, what_ifs=False)
    (layer,) = d.layers
    forget = sigmoid(lstm.bias_ih_l0[12:24])
    np.testing.assert_allclose(layer.timescales, -1 / np.log(forget), rtol=1e-12)
    assert layer.gates["forget"].mean == pytest.approx(forget.mean(), rel=1e-12)
    assert layer.gates["output"].mean == pytest.approx(sigmoid(lstm.bias_ih_l0[36:]).mean(), rel=1e-12)


def test_a_gru_with_a_constant_update_gate_has_the_exact_timescale_of_each_unit():
    gru = nn.GRU(5, 10).double()
    constant_gates(gru, (1,))  # gate order r, z, n: z keeps the previous state
    (layer,) = diagnose(gru, 15, what_ifs=False).layers
    np.testing.assert_allclose(layer.timescales, -1 / np.log(sigmoid(gru.bias_ih_l0[10:20])), rtol=1e-12)
    assert set(layer.gates) == {"update", "reset"}


def test_a_loop_over_an_lstm_cell_is_read_one_call_per_step():
    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = c = x.new_zeros(x.shape[0], 8)
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            return h

    model = Loop().double()
    constant_gates(model.cell, (0, 1, 3))
    (layer,) = diagnose(model, 12, what_ifs=False).layers
    assert layer.kind == "LSTMCell" and layer.path == "cell"
    np.testing.assert_allclose(layer.timescales, -1 / np.log(sigmoid(model.cell.bias_ih[8:16])), rtol=1e-12)


@pytest.mark.parametrize("a", [0.5, 0.9, 1.1])
def test_the_mean_field_factor_of_a_scaled_identity_relu_recurrence_is_its_scale(a):
    rnn = nn.RNN(3, 6, nonlinearity="relu").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(a * torch.eye(6, dtype=torch.float64))
        rnn.bias_hh_l0.fill_(100.0)  # every unit active at every step: the derivative is 1
    (layer,) = diagnose(rnn, 10, what_ifs=False).layers
    assert layer.mean_field_factor == pytest.approx(a, rel=1e-12)
    assert layer.spectral_radius == pytest.approx(a, rel=1e-12)
    assert layer.spectral_norm == pytest.approx(a, rel=1e-12)
    assert layer.dead == 0.0


def test_the_mean_field_factor_of_a_tanh_rnn_matches_its_measured_rate():
    d = diagnose(reference.rnn(32, 64), 100, what_ifs=False, dtype=torch.float64)
    assert d.layers[0].mean_field_factor == pytest.approx(d.profile.rate, rel=0.02)


@pytest.mark.parametrize(
    "module",
    [
        nn.LSTM(4, 6, num_layers=2),
        nn.LSTM(4, 6, proj_size=3, bidirectional=True),
        nn.GRU(4, 6, num_layers=2, bidirectional=True),
        nn.RNN(4, 6, nonlinearity="relu", bias=False),
    ],
    ids=["lstm-2-layers", "lstm-proj-bidirectional", "gru-2-layers-bidirectional", "relu-rnn-no-bias"],
)
def test_the_replayed_trajectory_is_the_modules_own(module):
    module = module.double()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    replay = _replay(module, {"LSTM": "LSTM", "GRU": "GRU"}.get(module.mode, "RNN"), x, None, torch.ones(7, 3) > 0)
    top = module.num_layers - 1
    directions = [replay[(top, d)]["h"] for d in range(2 if module.bidirectional else 1)]
    torch.testing.assert_close(torch.cat(directions, dim=-1), module(x)[0], rtol=1e-12, atol=1e-12)


def test_what_ifs_equal_separately_modified_and_probed_copies(state_guard):
    lstm = state_guard(nn.LSTM(8, 16, batch_first=True))
    d = diagnose(lstm, 40)
    changes = [w.change for w in d.what_ifs]
    assert changes == [
        "forget-gate bias +1",
        "forget-gate bias +2",
        "forget-gate bias +3",
        "chrono initialisation (T_max=40)",
        "orthogonal weight_hh",
    ]
    by_hand = copy.deepcopy(lstm)
    with torch.no_grad():
        by_hand.bias_ih_l0[16:32] += 2
    np.testing.assert_array_equal(d.what_ifs[1].profile.norms, probe(by_hand, 40).norms)
    np.testing.assert_array_equal(d.profile.norms, probe(lstm, 40).norms)


def test_chrono_initialisation_spreads_the_timescales_over_one_to_t_max():
    lstm = nn.LSTM(4, 32).double()
    constant_gates(lstm, (0, 1, 3))
    changed = copy.deepcopy(lstm)
    with torch.no_grad():
        _chrono(50)(changed, torch.Generator().manual_seed(0))
    u = torch.exp(changed.bias_ih_l0[32:64].detach())
    assert float(u.min()) >= 1 and float(u.max()) <= 49
    torch.testing.assert_close(changed.bias_ih_l0[:32], -changed.bias_ih_l0[32:64])
    assert not changed.bias_hh_l0[:64].any()
    (layer,) = diagnose(changed, 50, what_ifs=False).layers
    np.testing.assert_allclose(layer.timescales, -1 / np.log((u / (1 + u)).numpy()), rtol=1e-10)
    assert layer.timescales.min() >= 1 / math.log(2) - 1e-9 and layer.timescales.max() <= 49


def test_the_fix_is_the_first_remedy_that_passes():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lstm = nn.LSTM(32, 64, batch_first=True)  # PyTorch's default initialisation
    d = diagnose(lstm, 150)
    fix = d.fix(lambda p: p.ratio >= 1e-3)
    assert fix is not None and fix.change.startswith("forget-gate bias +")
    assert d.profile.ratio < 1e-3
    assert all(w.profile.ratio < 1e-3 for w in d.what_ifs[: d.what_ifs.index(fix)])
    assert diagnose(reference.rnn(8, 16), 200).fix(lambda p: p.ratio >= 0.5) is None


def test_a_relu_rnn_is_offered_the_identity_recurrence():
    d = diagnose(nn.RNN(4, 8, nonlinearity="relu"), 30)
    irnn = d.what_ifs[-1]
    assert irnn.change.startswith("identity weight_hh")
    assert irnn.profile.rate > d.profile.rate


def test_a_model_without_recurrent_layers_says_there_are_no_gates_to_read():
    conv = nn.Sequential(nn.Conv1d(10, 4, 3, padding=1))
    d = diagnose(lambda x: conv(x.transpose(1, 2)).transpose(1, 2), 10, input_size=10)
    assert d.layers == [] and d.what_ifs == [] and "no nn.RNN/LSTM/GRU" in d.note


def test_a_recurrent_module_of_the_models_own_is_named_as_not_readable():
    from zoo import IndRNNClassifier

    d = diagnose(IndRNNClassifier(), 20)
    (layer,) = d.layers
    assert layer.kind == "IndRNN" and "gates not available for IndRNN" in layer.note
    assert d.what_ifs == [] and "no nn.RNN/LSTM/GRU or cell found" in d.note


def test_the_diagnosis_round_trips_through_strict_json():
    d = diagnose(nn.LSTM(4, 8, num_layers=2), 20)
    text = json.dumps(d.to_dict(), allow_nan=False)
    back = Diagnosis.from_dict(json.loads(text))
    assert back.lines() == d.lines()
    np.testing.assert_array_equal(back.layers[1].timescales, d.layers[1].timescales)


def test_the_text_names_each_layer_its_gates_and_each_remedy():
    text = "\n".join(diagnose(nn.LSTM(8, 16), 60).lines())
    assert "model (LSTM layer 0), hidden 16" in text
    assert "forget gate: mean" in text and "memory timescales (steps): median" in text
    assert "forget-gate bias +2: horizon" in text


def test_what_ifs_must_be_a_bool():
    with pytest.raises(InvalidArgumentTypeError, match="what_ifs must be True or False"):
        diagnose(nn.LSTM(4, 8), 10, what_ifs="yes")


def test_the_global_random_state_and_the_model_are_left_alone(state_guard):
    model = nn.GRU(4, 8, batch_first=True)
    model.weight_hh_l0.grad = torch.ones_like(model.weight_hh_l0)
    state_guard(model)
    diagnose(model, 20)
    assert not model._forward_pre_hooks
