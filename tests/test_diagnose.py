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
from pytest_gradhealth.diagnosing import _chrono, _replay, _weights, diagnose, path_flows
from pytest_gradhealth.diagnosis import Diagnosis
from pytest_gradhealth.errors import InvalidArgumentError, InvalidArgumentTypeError


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


class CellLoop(nn.Module):
    def __init__(self, input_size: int = 4, hidden_size: int = 8) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return h


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
    model = CellLoop().double()
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
    replay, _ = _replay(module, {"LSTM": "LSTM", "GRU": "GRU"}.get(module.mode, "RNN"), x, None, torch.ones(7, 3) > 0)
    top = module.num_layers - 1
    directions = [replay[(top, d)]["h"] for d in range(2 if module.bidirectional else 1)]
    torch.testing.assert_close(torch.cat(directions, dim=-1), module(x)[0], rtol=1e-12, atol=1e-12)


def brute_force_paths(cell: nn.LSTMCell, x: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per step boundary t, <G_cell(t), G> and <G_hidden(t), G> on an unrolled LSTMCell loop:
    G = dL/dx_0 for L = sum over the batch of <v, h_last>; G_cell(t) the same with h_{t-1} detached where step t reads
    it (only the cell state crosses boundary t), G_hidden(t) with c_{t-1} detached. Checks G_cell + G_hidden = G."""
    v = torch.randn(cell.hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = v / v.norm()

    def gradient(boundary: int | None = None, block: str = "") -> torch.Tensor:
        inputs = x.clone().requires_grad_(True)
        h = c = x.new_zeros(x.shape[1], cell.hidden_size)
        for t in range(x.shape[0]):
            if t == boundary:
                h, c = (h.detach(), c) if block == "h" else (h, c.detach())
            h, c = cell(inputs[t], (h, c))
        return torch.autograd.grad((h @ v).sum(), inputs)[0][0]

    g = gradient()
    shares = []
    for t in range(1, x.shape[0]):
        through_cell, through_hidden = gradient(t, "h"), gradient(t, "c")
        torch.testing.assert_close(through_cell + through_hidden, g, rtol=1e-12, atol=1e-300)
        shares.append([float((part * g).sum()) for part in (through_cell, through_hidden)])
    return np.array(shares)[:, 0], np.array(shares)[:, 1]


def lstm_cell_of(lstm: nn.LSTM, suffix: str = "_l0") -> nn.LSTMCell:
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, name + suffix))
    return cell


def test_the_cell_share_is_the_brute_force_split_of_the_gradient_at_each_step_boundary():
    with torch.random.fork_rng():
        torch.manual_seed(2)  # weights whose shares lie inside (0, 1): for others, one of them may exceed 1
        lstm = nn.LSTM(5, 7, batch_first=True, bidirectional=True).double()
    x = torch.randn(3, 12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward, reverse = diagnose(lstm, 12, inputs=x, what_ifs=False).layers
    for layer, suffix, sequence in ((forward, "_l0", x), (reverse, "_l0_reverse", x.flip(1))):
        cell, hidden = brute_force_paths(lstm_cell_of(lstm, suffix), sequence.transpose(0, 1))
        assert layer.cell_share == pytest.approx(cell.sum() / (cell + hidden).sum(), rel=1e-9)
        assert 0 < layer.cell_share < 1
        np.testing.assert_allclose(cell + hidden, (cell + hidden)[0], rtol=1e-9)  # ||G||^2 at every boundary


def test_the_cell_share_of_a_loop_over_an_lstm_cell_is_the_brute_force_split():
    model = CellLoop().double()
    x = torch.randn(2, 9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (layer,) = diagnose(model, 9, inputs=x, what_ifs=False).layers
    cell, hidden = brute_force_paths(model.cell, x.transpose(0, 1))
    assert layer.cell_share == pytest.approx(cell.sum() / (cell + hidden).sum(), rel=1e-9)


def test_a_packed_batch_splits_only_the_steps_each_sample_really_takes():
    lstm = nn.LSTM(3, 5).double()
    x = torch.randn(8, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lengths = [8, 5, 2]
    mask = torch.arange(8)[:, None] < torch.tensor(lengths)[None, :]
    state = (torch.zeros(3, 5, dtype=torch.float64),) * 2
    cell, total = path_flows(x, state, _weights(lstm, "_l0"), mask, seed=0)
    # each sample alone, over its own steps: the same loss on its last real state
    alone = [brute_force_paths(lstm_cell_of(lstm), x[:n, b : b + 1]) for b, n in enumerate(lengths)]
    assert float(cell) == pytest.approx(sum(c.sum() for c, _ in alone), rel=1e-9)
    assert float(total) == pytest.approx(sum((c + h).sum() for c, h in alone), rel=1e-9)


def test_with_weight_hh_zero_the_whole_gradient_crosses_through_the_cell_state():
    lstm = nn.LSTM(4, 8, batch_first=True, num_layers=2)
    with torch.no_grad():
        lstm.weight_hh_l0.zero_()
        lstm.weight_hh_l1.zero_()
    shares = [layer.cell_share for layer in diagnose(lstm, 30, what_ifs=False).layers]
    assert shares == [1.0, 1.0]  # h_{t-1} is read by nothing: the hidden path's part is exactly zero


def test_with_the_forget_gate_shut_the_whole_gradient_crosses_through_the_hidden_state():
    lstm = nn.LSTM(4, 8, batch_first=True)
    with torch.no_grad():
        lstm.bias_ih_l0[8:16] = -30  # f = sigmoid(-30 + small) ~ 1e-13: c_{t-1} reaches c_t scaled by 1e-13
    (layer,) = diagnose(lstm, 30, what_ifs=False).layers
    assert abs(layer.cell_share) < 1e-10
    assert "100.0% through the hidden state" in "\n".join(layer.lines(30))


def test_a_loop_whose_calls_do_not_chain_gets_no_cell_share_and_says_why():
    class TwoSequences(CellLoop):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + super().forward(x.flip(1))  # two chains through one cell

    (layer,) = diagnose(TwoSequences(), 6, what_ifs=False).layers
    assert layer.cell_share is None and "do not form one chain" in layer.note
    assert diagnose(CellLoop(), 6, what_ifs=False).layers[0].cell_share is not None  # float32 calls chain


def by_hand(model: nn.Module, change: str, seq_len: int) -> nn.Module:
    """A copy of an nn.LSTM/GRU with `change` written out from its definition (biases by gate block: LSTM i, f, g, o;
    GRU r, z, n), the random draws from the probe's seed (0) as the remedy documents them."""
    changed = copy.deepcopy(model)
    h, generator = model.hidden_size, torch.Generator().manual_seed(0)
    with torch.no_grad():
        if change.startswith(("forget-gate bias +", "update-gate bias +")):
            changed.bias_ih_l0[h : 2 * h] += int(change[-1])
        elif change.startswith("chrono"):
            forget = torch.log(1 + (seq_len - 2) * torch.rand(h, generator=generator, dtype=torch.float64))
            changed.bias_ih_l0[h : 2 * h], changed.bias_ih_l0[:h] = forget, -forget
            changed.bias_hh_l0[: 2 * h] = 0
        else:
            for block in changed.weight_hh_l0.split(h):
                q, r = torch.linalg.qr(torch.randn(h, h, generator=generator, dtype=torch.float64))
                block.copy_(q * torch.sign(torch.diagonal(r)))
    return changed


@pytest.mark.parametrize("module", [nn.LSTM(8, 16, batch_first=True), nn.GRU(8, 16, batch_first=True)], ids=str)
def test_each_what_if_equals_a_separately_modified_and_probed_copy(state_guard, module):
    state_guard(module)
    d = diagnose(module, 40)
    gate = "forget" if isinstance(module, nn.LSTM) else "update"
    changes = [f"{gate}-gate bias +{k}" for k in (1, 2, 3)]
    changes += ["chrono initialisation (T_max=40)"] if isinstance(module, nn.LSTM) else []
    assert [w.change for w in d.what_ifs] == [*changes, "orthogonal weight_hh"]
    for what_if in d.what_ifs:
        np.testing.assert_array_equal(what_if.profile.norms, probe(by_hand(module, what_if.change, 40), 40).norms)
    np.testing.assert_array_equal(d.profile.norms, probe(module, 40).norms)


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


def test_chrono_draws_its_forget_biases_log_uniform_over_one_to_t_max_minus_one():
    lstm = nn.LSTM(1, 4096)
    with torch.no_grad():
        _chrono(50)(lstm, torch.Generator().manual_seed(0))
    u = np.sort(np.exp(lstm.bias_ih_l0[4096:8192].detach().double().numpy()))
    uniform = (u - 1) / 48  # U(1, 49) -> U(0, 1)
    ranks = np.arange(1, len(u) + 1) / len(u)
    # Kolmogorov-Smirnov distance to U(1, 49): below 1.95 / sqrt(n), the 0.1% critical value, for this fixed seed
    assert np.max(np.maximum(ranks - uniform, uniform - (ranks - 1 / len(u)))) < 1.95 / math.sqrt(len(u))


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
    assert back.layers[1].cell_share == d.layers[1].cell_share is not None
    older = json.loads(text)
    for layer in older["layers"]:
        del layer["cell_share"]  # written before cell_share existed
    assert [layer.cell_share for layer in Diagnosis.from_dict(older).layers] == [None, None]


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


def test_with_seeds_the_profile_and_every_remedy_are_measured_over_the_seeds():
    """The figures a diagnosis reports, and the remedies it judges, are the seeded ones an assertion with seeds=
    judges; the gates are read along the first draw."""
    model = reference.lstm(8, 16)
    diagnosis = diagnose(model, 60, seeds=3)
    seeded = probe(model, 60, seeds=3)
    assert diagnosis.profile.seeds == 3 and diagnosis.profile.log10_ratio == seeded.log10_ratio
    assert diagnosis.what_ifs and all(w.profile.seeds == 3 for w in diagnosis.what_ifs)
    one = diagnose(model, 60)
    assert [layer.lines(60) for layer in diagnosis.layers] == [layer.lines(60) for layer in one.layers]


def test_a_factory_is_refused_with_the_call_that_builds_its_model():
    def factory():
        return nn.LSTM(8, 16, batch_first=True)

    with pytest.raises(InvalidArgumentError, match=r"takes the model, not a factory: pass factory\(\)"):
        diagnose(factory, 50, seeds=3)
