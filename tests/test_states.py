"""measure="hidden"/"cell": the probe's state gradients equal those of an explicitly unrolled loop of cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from pytest_gradhealth import (
    GradHealthError,
    GradientProfile,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ModelInterfaceError,
    probe,
)
from pytest_gradhealth.engine import aten
from pytest_gradhealth.engine.taps import fused as fused_tap
from pytest_gradhealth.engine.taps import lstm, scans

REL = 1e-9
SEQ_LEN, BATCH, INPUT, HIDDEN = 9, 3, 4, 5


def lstm_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None):
    """One LSTM step written out (gate order i, f, g, o), so that c_t reaches the loss through h_t in the graph."""
    gates = x @ weight_ih.T + h @ weight_hh.T
    if bias_ih is not None:
        gates = gates + bias_ih + bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if weight_hr is None else h @ weight_hr.T), c


def cell_like(module: nn.RNNBase, input_size: int) -> nn.Module:
    """The nn.RNNCell or nn.GRUCell that computes one step of one layer of `module`."""
    if isinstance(module, nn.GRU):
        return nn.GRUCell(input_size, module.hidden_size, bias=module.bias).double()
    return nn.RNNCell(input_size, module.hidden_size, bias=module.bias, nonlinearity=module.nonlinearity).double()


class Unrolled:
    """A fused module's computation as a Python loop of cells with its weights, one layer after the other.

    `h[layer][t]`, `c[layer][t]` are the states after step t. Every use of `weight_hh` is its own leaf copy, so the
    gradient of `weight_hh[layer][t]` is the term that step t adds to dL/dW.
    """

    def __init__(self, module: nn.RNNBase, x: torch.Tensor) -> None:
        batch, seq_len, _ = x.shape
        self.h: list[list[torch.Tensor]] = []
        self.c: list[list[torch.Tensor]] = []
        self.weight_hh: list[list[torch.Tensor]] = []
        inputs = list(x.unbind(1))
        for layer in range(module.num_layers):
            weights = {
                name.removesuffix(f"_l{layer}"): p.detach()
                for name, p in module.named_parameters()
                if name.endswith(f"_l{layer}")
            }
            cell = None if isinstance(module, nn.LSTM) else cell_like(module, inputs[0].shape[-1])
            h = x.new_zeros(batch, weights["weight_hh"].shape[1])
            c = x.new_zeros(batch, module.hidden_size)
            hs, cs, copies = [], [], []
            for t in range(seq_len):
                step_weights = {**weights, "weight_hh": weights["weight_hh"].clone().requires_grad_(True)}
                if cell is None:
                    h, c = lstm_step(inputs[t], h, c, **step_weights)
                    cs.append(c)
                else:
                    h = functional_call(cell, step_weights, (inputs[t], h))
                hs.append(h)
                copies.append(step_weights["weight_hh"])
            self.h.append(hs)
            self.c.append(cs)
            self.weight_hh.append(copies)
            inputs = hs

    def norms(self, loss: torch.Tensor, states: list[torch.Tensor], steps) -> tuple[np.ndarray, np.ndarray]:
        """Batch-RMS and per-sample gradient norms of `loss` at the states of the given steps."""
        grads = torch.autograd.grad(loss, [states[t] for t in steps], retain_graph=True)
        per_sample = torch.stack([g.pow(2).sum(-1) for g in grads], 1)  # (batch, steps)
        return per_sample.mean(0).sqrt().numpy(), per_sample.sqrt().numpy()


def fused(cls: type[nn.RNNBase], num_layers: int = 1, **kwargs) -> nn.RNNBase:
    torch.manual_seed(0)
    return cls(INPUT, HIDDEN, num_layers=num_layers, **{"batch_first": True, **kwargs}).double()


def inputs_and_projection(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, SEQ_LEN, INPUT, generator=gen, dtype=torch.float64)
    v = torch.randn(HIDDEN, generator=gen, dtype=torch.float64)
    return x, v


def last_output_loss(v: torch.Tensor):
    return lambda output: (output[0][:, -1] * v).sum()


CASES = [(nn.RNN, "hidden"), (nn.GRU, "hidden"), (nn.LSTM, "hidden"), (nn.LSTM, "cell")]
PATHS = {"split": 0, "one-call": math.inf}  # fused_tap.SPLIT_MIN_WORK that forces each way


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """A fused layer measured split in time, or in one call where it can be (the hidden state of an RNN or LSTM)."""
    monkeypatch.setattr(fused_tap, "SPLIT_MIN_WORK", PATHS[request.param])
    return request.param


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize(("cls", "measure"), CASES, ids=[f"{c.__name__}-{m}" for c, m in CASES])
@pytest.mark.parametrize(("num_layers", "layer"), [(1, 0), (2, 0), (2, 1)])
@pytest.mark.parametrize("checkpoints", [None, 2, 4, SEQ_LEN])
def test_state_gradients_equal_an_unrolled_loop_of_cells(cls, measure, num_layers, layer, checkpoints):
    module = fused(cls, num_layers)
    x, v = inputs_and_projection()
    profile = probe(
        module, SEQ_LEN, inputs=x, loss_fn=last_output_loss(v), measure=measure, layer=layer, checkpoints=checkpoints
    )
    ref = Unrolled(module, x)
    measured = (ref.h if measure == "hidden" else ref.c)[layer]
    norms, sample_norms = ref.norms((ref.h[-1][-1] * v).sum(), measured, profile.steps)
    np.testing.assert_allclose(profile.norms, norms, rtol=REL)
    np.testing.assert_allclose(profile.sample_norms, sample_norms, rtol=REL)
    assert (profile.measure, profile.layer) == (measure, layer)
    assert len(profile.steps) == (checkpoints or SEQ_LEN)


def counted_kernel_calls(monkeypatch, mode: str) -> list[int]:
    """The time steps of each call of the fused kernel for `mode` (the probe's, and the module's own when it runs), and
    a 1 for each call of the cell's op, which runs one step."""
    calls, op, cell = [], aten.FUSED_OPS[mode], aten.CELL_OPS[mode]

    def counting(x, *args):
        calls.append(x.shape[0])
        return op(x, *args)

    def counting_cell(*args):
        calls.append(1)
        return cell(*args)

    monkeypatch.setitem(aten.FUSED_OPS, mode, counting)
    monkeypatch.setitem(aten.CELL_OPS, mode, counting_cell)
    return calls


ONE_CALL = [
    (nn.RNN, "RNN_TANH", "hidden"),
    (nn.GRU, "GRU", "hidden"),
    (nn.LSTM, "LSTM", "hidden"),
    (nn.LSTM, "LSTM", "cell"),
]


@pytest.mark.parametrize(("cls", "mode", "measure"), ONE_CALL, ids=[f"{c.__name__}-{m}" for c, _, m in ONE_CALL])
def test_a_small_layers_states_are_measured_in_one_kernel_call(cls, mode, measure, monkeypatch):
    calls = counted_kernel_calls(monkeypatch, mode)
    probe(fused(cls, 2), SEQ_LEN, measure=measure, layer=0, checkpoints=4)
    assert calls == [SEQ_LEN, SEQ_LEN]  # one call per layer
    calls.clear()
    probe(fused(cls, 2), SEQ_LEN, measure=measure, layer=0, contributions=True)  # each step's own weight copy
    assert calls == [1] * SEQ_LEN * 2


@pytest.mark.parametrize(("cls", "mode"), [(nn.RNN, "RNN_TANH"), (nn.GRU, "GRU"), (nn.LSTM, "LSTM")])
def test_every_step_of_an_rnn_or_a_gru_runs_the_cells_op_and_an_lstm_one_kernel_call(cls, mode, monkeypatch):
    # One step of an RNN or GRU cell costs less than the one-call path's wider input projection; an LSTM's cell op
    # is slower than its fused kernel.
    calls = counted_kernel_calls(monkeypatch, mode)
    probe(fused(cls, 2), SEQ_LEN, measure="hidden", layer=0)
    assert calls == ([SEQ_LEN] if mode == "LSTM" else [1] * SEQ_LEN) + [SEQ_LEN]  # the layer above: one call


def test_the_cell_state_of_a_packed_batch_of_several_lengths_is_measured_split_in_time(monkeypatch):
    # Its final cell states are cut out of the layer at each sample's last step, where c_t's gradient mixes two paths.
    calls = counted_kernel_calls(monkeypatch, "LSTM")
    x, _ = inputs_and_projection()
    packed = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    probe(fused(nn.LSTM), SEQ_LEN, inputs=packed, measure="cell")
    assert calls == [1] * SEQ_LEN
    calls.clear()
    probe(fused(nn.LSTM), SEQ_LEN, inputs=packed, measure="hidden")
    assert calls == [4, 3, 2]  # split only where the samples end: steps 3, 6 and 8


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_the_linear_scan_is_the_sequential_recurrence(length, reverse):
    gen = torch.Generator().manual_seed(length)
    a, b = (torch.randn(length, 2, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    order = range(length - 1, -1, -1) if reverse else range(length)
    y, expected = torch.zeros(2, 3, dtype=torch.float64), torch.empty_like(b)
    for t in order:
        y = expected[t] = a[t] * y + b[t]
    torch.testing.assert_close(scans.linear_scan(a, b, reverse=reverse), expected, rtol=1e-12, atol=1e-12)


def test_the_split_path_is_kept_where_its_chunks_hold_enough_work(monkeypatch):
    # hidden 512, batch 8: one step of the batch is 8 * 512^2 = 2^21, so chunks of 2 steps or more reach 2^22.
    calls = counted_kernel_calls(monkeypatch, "RNN_TANH")
    rnn = nn.RNN(INPUT, 512, batch_first=True)
    probe(rnn, SEQ_LEN, measure="hidden", checkpoints=2)  # steps 0 and 8: chunks of 1 and 8 steps
    assert calls == [1, SEQ_LEN - 1]
    calls.clear()
    probe(rnn, SEQ_LEN, measure="hidden")  # every step: chunks of 1 step, each the cell's op
    assert calls == [1] * SEQ_LEN
    lstm_calls = counted_kernel_calls(monkeypatch, "LSTM")
    probe(nn.LSTM(INPUT, 512, batch_first=True), SEQ_LEN, measure="cell", checkpoints=2)  # the cell state too
    assert lstm_calls == [1, SEQ_LEN - 1]


def test_checkpoints_are_evenly_spaced_and_keep_the_first_and_the_last_step():
    profile = probe(fused(nn.GRU), 101, measure="hidden", checkpoints=5)
    np.testing.assert_array_equal(profile.steps, [0, 25, 50, 75, 100])
    np.testing.assert_array_equal(probe(fused(nn.GRU), 10, measure="hidden", checkpoints=4).steps, [0, 3, 6, 9])


def test_the_top_layer_is_measured_by_default():
    profile = probe(fused(nn.LSTM, 3), SEQ_LEN, measure="hidden")
    assert profile.layer == 2


VARIANTS = {
    "time-major": (nn.GRU, {"batch_first": False}),
    "no-bias": (nn.LSTM, {"bias": False}),
    "relu": (nn.RNN, {"nonlinearity": "relu"}),
    "projections": (nn.LSTM, {"proj_size": 3}),
}


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("variant", VARIANTS)
def test_module_variants_equal_the_unrolled_loop(variant):
    cls, kwargs = VARIANTS[variant]
    module = fused(cls, 2, **kwargs)
    x, v = inputs_and_projection()
    ref = Unrolled(module, x)
    v = v[: ref.h[-1][-1].shape[-1]]
    time_major = not module.batch_first
    measures = ["hidden", "cell"] if cls is nn.LSTM else ["hidden"]
    for measure in measures:
        profile = probe(
            module,
            SEQ_LEN,
            inputs=x.transpose(0, 1) if time_major else x,
            batch_first=not time_major,
            loss_fn=lambda output: ((output[0][-1] if time_major else output[0][:, -1]) * v).sum(),
            measure=measure,
            layer=0,
        )
        measured = (ref.h if measure == "hidden" else ref.c)[0]
        norms, _ = ref.norms((ref.h[-1][-1] * v).sum(), measured, range(SEQ_LEN))
        np.testing.assert_allclose(profile.norms, norms, rtol=REL)


def test_the_reference_lstm_step_is_torchs_lstm_cell():
    cell = nn.LSTMCell(INPUT, HIDDEN).double()
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (INPUT, HIDDEN, HIDDEN))
    expected = cell(x, (h, c))
    actual = lstm_step(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(actual, expected, rtol=1e-14, atol=0)


# -- closed forms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("forget_bias", [0.0, 1.5, 4.0])
def test_lstm_cell_state_gradient_decays_exactly_as_the_constant_forget_gate(forget_bias):
    # All weights zero except the input to the candidate gate: f = sigmoid(b_f) at every step and
    # c_t = f c_{t-1} + g(x_t) / 2, while h_t = tanh(c_t) / 2 reaches the loss only at the last step.
    # So dL/dc_t = f^(T-1-t) dL/dc_{T-1}, for every sample, whatever the inputs.
    seq_len = 30
    lstm = nn.LSTM(3, 3, batch_first=True).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.weight_ih_l0[6:9].copy_(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)))
        lstm.bias_hh_l0[3:6].fill_(forget_bias)
    f = 1 / (1 + math.exp(-forget_bias))
    profile = probe(lstm, seq_len, measure="cell")
    lags = np.arange(seq_len - 1, -1, -1)
    np.testing.assert_allclose(profile.norms / profile.norms[-1], f**lags, rtol=REL)
    np.testing.assert_allclose(profile.sample_norms / profile.sample_norms[:, -1:], np.tile(f**lags, (8, 1)), rtol=REL)
    assert profile.rate == pytest.approx(f, rel=REL)


@pytest.mark.usefixtures("path")
def test_relu_rnn_hidden_gradient_is_exactly_a_to_the_lag_times_the_unit_projection():
    # h_t = relu(x_t + a h_{t-1}) with positive inputs is linear: dL/dh_t = a^(T-1-t) v, and |v| = 1.
    a, seq_len = 0.8, 25
    rnn = nn.RNN(4, 4, nonlinearity="relu", batch_first=True).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.eye(4))
        rnn.weight_hh_l0.copy_(a * torch.eye(4, dtype=torch.float64))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    positive = lambda batch, seq_len, gen: torch.rand(batch, seq_len, 4, generator=gen, dtype=torch.float64) + 0.1  # noqa: E731
    profile = probe(rnn, seq_len, input_fn=positive, measure="hidden", checkpoints=6)
    np.testing.assert_allclose(profile.norms, a ** (seq_len - 1 - profile.steps), rtol=REL)


# -- weight-gradient contributions ---------------------------------------------------------------------


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("checkpoints", [None, 4])
def test_contributions_are_the_norms_of_each_steps_term_of_every_layers_recurrent_weight(cls, checkpoints):
    module = fused(cls, 2)
    x, v = inputs_and_projection()
    profile = probe(
        module,
        SEQ_LEN,
        inputs=x,
        loss_fn=last_output_loss(v),
        measure="hidden",
        checkpoints=checkpoints,
        contributions=True,
    )
    ref = Unrolled(module, x)
    loss = (ref.h[-1][-1] * v).sum()
    assert set(profile.contributions) == {"weight_hh_l0", "weight_hh_l1"}
    for layer in range(2):
        terms = torch.autograd.grad(loss, [ref.weight_hh[layer][t] for t in profile.steps], retain_graph=True)
        expected = [float(t.norm()) for t in terms]
        np.testing.assert_allclose(profile.contributions[f"weight_hh_l{layer}"], expected, rtol=REL, atol=1e-300)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_contributions_sum_to_the_autograd_weight_gradient(cls, monkeypatch):
    # The per-step terms themselves (the profile keeps their norms) add up to dL/dW of the unchanged module.
    captured = {}

    def keep(aliases, grads):
        captured.update(weight_terms(aliases, grads))
        return captured

    weight_terms = lstm.weight_terms
    monkeypatch.setattr(lstm, "weight_terms", keep)
    module = fused(cls, 2, **({"proj_size": 3} if cls is nn.LSTM else {}))
    x, _ = inputs_and_projection()
    loss_fn = lambda output: output[0][:, -1].pow(2).sum()  # noqa: E731
    probe(module, SEQ_LEN, inputs=x, loss_fn=loss_fn, measure="hidden", contributions=True)
    names = [name for name, _ in module.named_parameters() if name.startswith(("weight_hh", "weight_hr"))]
    assert set(captured) == set(names)
    expected = torch.autograd.grad(loss_fn(module(x)), [getattr(module, name) for name in names])
    for name, gradient in zip(names, expected, strict=True):
        assert len(captured[name]) == SEQ_LEN
        torch.testing.assert_close(torch.stack(captured[name]).sum(0), gradient, rtol=REL, atol=1e-12)


def test_contributions_at_the_first_step_are_zero_from_a_zero_initial_state():
    # W_hh multiplies h_{-1} = 0 at step 0, so that use adds nothing to dL/dW_hh.
    profile = probe(fused(nn.GRU), SEQ_LEN, measure="hidden", contributions=True)
    assert profile.contributions["weight_hh_l0"][0] == 0.0
    assert (profile.contributions["weight_hh_l0"][1:] > 0).all()


def test_contributions_touch_no_parameter_gradient(state_guard):
    module = fused(nn.LSTM, 2)
    module(torch.randn(2, 3, INPUT, dtype=torch.float64))[0].sum().backward()
    module.weight_hh_l1.grad = None
    state_guard(module)
    probe(module, SEQ_LEN, measure="cell", contributions=True, checkpoints=3)


def test_a_profile_with_contributions_survives_json():
    profile = probe(fused(nn.LSTM, 2), SEQ_LEN, measure="cell", layer=0, checkpoints=3, contributions=True)
    restored = GradientProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    np.testing.assert_array_equal(restored.steps, [0, 4, 8])
    assert (restored.measure, restored.layer) == ("cell", 0)
    for name, norms in profile.contributions.items():
        np.testing.assert_array_equal(restored.contributions[name], norms)


# -- loops over a cell module --------------------------------------------------------------------------


class CellLoop(nn.Module):
    """A model written as a Python loop over a cell, returning every step's hidden state."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, outputs = None, []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs, 1)


def loop_and_fused(cls: type[nn.RNNBase]) -> tuple[CellLoop, nn.RNNBase]:
    module = fused(cls)
    cell = {nn.RNN: nn.RNNCell, nn.GRU: nn.GRUCell, nn.LSTM: nn.LSTMCell}[cls](INPUT, HIDDEN).double()
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(module, f"{name}_l0"))
    return CellLoop(cell), module


@pytest.mark.parametrize(("cls", "measure"), CASES, ids=[f"{c.__name__}-{m}" for c, m in CASES])
def test_a_loop_over_a_cell_measures_what_the_fused_module_with_its_weights_does(cls, measure):
    loop, module = loop_and_fused(cls)
    for checkpoints in (None, 3):
        looped = probe(loop, SEQ_LEN, measure=measure, checkpoints=checkpoints, contributions=True)
        expected = probe(module, SEQ_LEN, measure=measure, checkpoints=checkpoints, contributions=True)
        np.testing.assert_allclose(looped.sample_norms, expected.sample_norms, rtol=REL)
        np.testing.assert_allclose(
            looped.contributions["weight_hh"], expected.contributions["weight_hh_l0"], rtol=REL, atol=1e-300
        )
        assert looped.layer == 0


class TanhCell(nn.Module):
    """A hand-written vanilla RNN cell: h = tanh(W x + U h)."""

    def __init__(self) -> None:
        super().__init__()
        self.ih = nn.Linear(INPUT, HIDDEN)
        self.hh = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], HIDDEN)
        return torch.tanh(self.ih(x) + self.hh(h))


def test_any_module_called_once_per_step_can_be_named_as_the_cell():
    loop = CellLoop(TanhCell()).double()
    rnn = fused(nn.RNN)
    with torch.no_grad():
        for ours, theirs in (("weight_ih_l0", loop.cell.ih.weight), ("bias_ih_l0", loop.cell.ih.bias)):
            getattr(rnn, ours).copy_(theirs)
        for ours, theirs in (("weight_hh_l0", loop.cell.hh.weight), ("bias_hh_l0", loop.cell.hh.bias)):
            getattr(rnn, ours).copy_(theirs)
    looped = probe(loop, SEQ_LEN, measure="hidden", cell="cell")
    expected = probe(rnn, SEQ_LEN, measure="hidden")
    np.testing.assert_allclose(looped.sample_norms, expected.sample_norms, rtol=REL)
    assert probe(loop, SEQ_LEN, measure="hidden", cell=loop.cell).norms.tolist() == looped.norms.tolist()


# -- the recurrent module inside a user's model --------------------------------------------------------


class Tagger(nn.Module):
    """A user's model: the recurrent module a few attributes down, between other layers."""

    def __init__(self, cls: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        self.body = nn.ModuleDict({"proj": nn.Linear(INPUT, INPUT), "rnn": cls(INPUT, HIDDEN, 2, batch_first=True)})
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body["rnn"](torch.relu(self.body["proj"](x)))[0])


def test_the_recurrent_module_is_found_inside_the_model_or_named_by_path_or_object():
    model = Tagger().double()
    found = probe(model, SEQ_LEN, measure="hidden", layer=0)
    by_path = probe(model, SEQ_LEN, measure="hidden", layer=0, module="body.rnn")
    by_object = probe(model, SEQ_LEN, measure="hidden", layer=0, module=model.body["rnn"])
    assert found.norms.tolist() == by_path.norms.tolist() == by_object.norms.tolist()


def test_the_found_module_is_the_one_measured_in_a_float64_copy():
    model = Tagger()
    profile = probe(model, SEQ_LEN, measure="hidden", module=model.body["rnn"], dtype=torch.float64)
    assert profile.dtype == "float64" and np.isfinite(profile.norms).all()
    assert "forward" not in vars(model.body["rnn"])


class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(INPUT, HIDDEN, batch_first=True)
        self.decoder = nn.GRU(HIDDEN, HIDDEN, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)[0])[0]


def test_with_several_recurrent_modules_module_says_which():
    model = EncoderDecoder().double()
    encoder = probe(model, SEQ_LEN, measure="cell", module="encoder")
    decoder = probe(model, SEQ_LEN, measure="hidden", module="decoder")
    assert decoder.norms[-1] == pytest.approx(1.0, rel=REL)  # dL/dh_T = v, a unit vector
    assert encoder.norms[-1] != decoder.norms[-1]


def test_a_plain_callable_is_measured_at_the_module_object_it_calls():
    gru = fused(nn.GRU)
    profile = probe(lambda x: gru(x)[0], SEQ_LEN, input_size=INPUT, dtype=torch.float64, measure="hidden", module=gru)
    np.testing.assert_array_equal(profile.norms, probe(gru, SEQ_LEN, measure="hidden").norms)


def test_the_module_is_restored_after_the_probe_even_when_the_model_fails():
    model = Tagger().double()
    model.head = nn.Linear(7, 3).double()  # does not fit the recurrent output
    with pytest.raises(ModelInterfaceError):
        probe(model, SEQ_LEN, measure="hidden")
    assert "forward" not in vars(model.body["rnn"])
    assert model.body["rnn"](torch.zeros(1, 2, INPUT, dtype=torch.float64))[0].shape == (1, 2, HIDDEN)


class Recording(nn.Module):
    """Calls its recurrent module as a user's model might (initial state, packed input) and keeps what it got."""

    def __init__(self, rnn: nn.RNNBase, packed: bool) -> None:
        super().__init__()
        self.rnn, self.packed, self.seen = rnn, packed, []
        self.h0 = torch.randn(rnn.num_layers, 1, rnn.proj_size or rnn.hidden_size, dtype=torch.float64)
        self.c0 = torch.randn(rnn.num_layers, 1, rnn.hidden_size, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.packed:
            x = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
        h0 = self.h0.expand(-1, batch, -1).contiguous()
        hx = (h0, self.c0.expand(-1, batch, -1).contiguous()) if isinstance(self.rnn, nn.LSTM) else h0
        output, state = self.rnn(x, hx)
        self.seen.append((output, state))
        return state[0][-1] if isinstance(self.rnn, nn.LSTM) else state[-1]


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize(("cls", "kwargs"), [(nn.GRU, {}), (nn.LSTM, {"proj_size": 2})], ids=["GRU", "LSTM"])
def test_the_replaced_forward_returns_what_the_module_returns(cls, kwargs, packed):
    model = Recording(fused(cls, 2, **kwargs), packed)
    x, _ = inputs_and_projection()
    probe(model, SEQ_LEN, inputs=x, measure="hidden", layer=0, checkpoints=4)
    model(x)
    (split_output, split_state), (output, state) = model.seen
    if packed:
        split_output, output = split_output.data, output.data
    torch.testing.assert_close(split_output, output, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(split_state, state, rtol=1e-12, atol=1e-14)


# -- padded batches ------------------------------------------------------------------------------------

LENGTHS = (SEQ_LEN, 4, 7)


def assert_each_sample_is_measured_as_if_alone(profile, model, x, **options):
    """Sample b's norms are those of probing it alone, cut to its length, placed by lag from its last real step."""
    for b, length in enumerate(LENGTHS):
        alone = probe(model, length, inputs=x[b : b + 1, :length], **options)
        np.testing.assert_allclose(profile.sample_norms[b, SEQ_LEN - length :], alone.sample_norms[0], rtol=REL)
        assert np.isnan(profile.sample_norms[b, : SEQ_LEN - length]).all()
    valid = ~np.isnan(profile.sample_norms)
    expected = np.sqrt((np.where(valid, profile.sample_norms, 0) ** 2).sum(0) / valid.sum(0))
    np.testing.assert_allclose(profile.norms, expected, rtol=REL)


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("measure", ["input", "hidden", "cell"])
def test_a_padded_batch_measures_each_sample_from_its_own_last_real_step(measure):
    lstm = fused(nn.LSTM, 2)
    x, _ = inputs_and_projection()
    profile = probe(lstm, SEQ_LEN, inputs=x, lengths=LENGTHS, measure=measure)
    assert_each_sample_is_measured_as_if_alone(profile, lstm, x, measure=measure)


def test_a_loop_over_a_cell_with_a_padded_batch_is_measured_by_lag_too():
    loop, _ = loop_and_fused(nn.GRU)
    x, _ = inputs_and_projection()
    profile = probe(loop, SEQ_LEN, inputs=x, lengths=LENGTHS, measure="hidden")
    assert_each_sample_is_measured_as_if_alone(profile, loop, x, measure="hidden")


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_checkpoints_of_a_padded_batch_are_the_same_lags_of_every_step(cls):
    module = fused(cls, 2)
    every = probe(module, SEQ_LEN, lengths=LENGTHS, measure="hidden", layer=0)
    some = probe(module, SEQ_LEN, lengths=LENGTHS, measure="hidden", layer=0, checkpoints=4)
    np.testing.assert_allclose(some.norms, every.norms[some.steps], rtol=REL)
    np.testing.assert_allclose(some.sample_norms, every.sample_norms[:, some.steps], rtol=REL)


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("measure", ["input", "hidden", "cell"])
def test_a_packed_sequence_is_measured_as_the_padded_batch_with_its_lengths(measure):
    lstm = fused(nn.LSTM, 2)
    x, _ = inputs_and_projection()
    packed = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    from_packed = probe(lstm, SEQ_LEN, inputs=packed, measure=measure)
    from_padded = probe(lstm, SEQ_LEN, inputs=x, lengths=LENGTHS, measure=measure)
    np.testing.assert_allclose(from_packed.sample_norms, from_padded.sample_norms, rtol=REL)


class LastState(nn.Module):
    """A classifier on the final hidden state of a packed batch: each sample's state after its own last step."""

    def __init__(self, cls: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cls(INPUT, HIDDEN, 2)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, packed: nn.utils.rnn.PackedSequence) -> torch.Tensor:
        final = self.rnn(packed)[1]
        return self.head((final[0] if isinstance(final, tuple) else final)[-1])


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_a_model_that_reads_the_final_state_of_a_packed_batch_is_measured_per_sample(cls):
    model = LastState(cls).double()
    x, _ = inputs_and_projection()
    pack = nn.utils.rnn.pack_padded_sequence
    profile = probe(model, SEQ_LEN, inputs=pack(x, LENGTHS, batch_first=True, enforce_sorted=False), measure="hidden")
    for b, length in enumerate(LENGTHS):
        alone = probe(model, length, inputs=pack(x[b : b + 1, :length], [length], batch_first=True), measure="hidden")
        np.testing.assert_allclose(profile.sample_norms[b, SEQ_LEN - length :], alone.sample_norms[0], rtol=REL)


def test_drawn_inputs_are_zero_past_each_length_and_the_batch_is_one_sample_per_length():
    seen = []

    def model(x):
        seen.append(x.detach())
        return x.cumsum(1)

    profile = probe(model, SEQ_LEN, input_size=2, dtype=torch.float64, lengths=LENGTHS)
    assert profile.batch_size == len(LENGTHS)
    for b, length in enumerate(LENGTHS):
        assert (seen[0][b, length:] == 0).all() and (seen[0][b, :length] != 0).all()
    # d/dx_t of sum of a cumulative sum up to each sample's last step is v at every real step: all norms are 1.
    np.testing.assert_allclose(profile.norms, 1.0, rtol=REL)


# -- bad input -----------------------------------------------------------------------------------------


class Spy(nn.Module):
    """Recurrent modules behind a linear head, counting forward calls: argument errors must come before any."""

    def __init__(self, *rnns: nn.Module) -> None:
        super().__init__()
        self.rnns = nn.ModuleList(rnns or [nn.GRU(3, 5, 2, batch_first=True)])
        self.head = nn.Linear(5, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        for rnn in self.rnns:
            x = rnn(x)[0]
        return self.head(x)


def packed_batch(lengths):
    return nn.utils.rnn.pack_padded_sequence(torch.zeros(len(lengths), 6, 3), lengths, batch_first=True)


BAD_ARGUMENTS = [
    ({"measure": "cell"}, InvalidArgumentError, "measure='cell' reads an LSTM's cell state, but 'rnns.0' is a GRU"),
    (
        {"measure": "hidden", "layer": 2},
        InvalidArgumentError,
        r"layer=2 is out of range: 'rnns.0' has 2 layer\(s\), 0..1",
    ),
    ({"measure": "hidden", "layer": -1}, InvalidArgumentError, "layer must be >= 0, got -1"),
    ({"measure": "hidden", "layer": 1.0}, InvalidArgumentTypeError, "layer must be an int, got float"),
    ({"measure": "hidden", "checkpoints": 1}, InvalidArgumentError, "checkpoints must be >= 2, got 1"),
    ({"measure": "hidden", "checkpoints": 7}, InvalidArgumentError, "checkpoints=7 is more than the 6 timesteps"),
    ({"checkpoints": 2.0}, InvalidArgumentTypeError, "checkpoints must be an int, got float"),
    (
        {"measure": "hidden", "module": "encoder"},
        InvalidArgumentError,
        r"Spy has no submodule module='encoder'; its recurrent modules are 'rnns.0' \(GRU\)",
    ),
    (
        {"measure": "hidden", "module": "head"},
        InvalidArgumentError,
        "module= must name an nn.RNN, nn.LSTM or nn.GRU, but 'head' is a Linear; .* pass cell=",
    ),
    ({"measure": "hidden", "module": nn.GRU(3, 5)}, InvalidArgumentError, "GRU that is not a submodule of Spy"),
    ({"measure": "hidden", "cell": "rnns.0"}, InvalidArgumentError, "'rnns.0' is an nn.GRU .* pass module= for it"),
    ({"measure": "hidden", "module": "rnns.0", "cell": "head"}, InvalidArgumentError, "module= .* or cell= .*not both"),
    ({"measure": "hidden", "module": 3}, InvalidArgumentTypeError, "module must be an attribute path .* got int"),
    ({"layer": 0}, InvalidArgumentError, "layer= only applies to measure='hidden' or 'cell', not measure='input'"),
    ({"contributions": True}, InvalidArgumentError, "contributions= only applies to measure='hidden'"),
    ({"measure": "hidden", "contributions": 1}, InvalidArgumentTypeError, "contributions must be True or False"),
    ({"batch_size": 3, "lengths": [6, 3]}, InvalidArgumentError, "lengths has 2 entries but the batch has 3 samples"),
    ({"inputs": torch.zeros(3, 6, 3), "lengths": [6, 3]}, InvalidArgumentError, "the batch has 3 samples"),
    ({"lengths": [6, 7]}, InvalidArgumentError, r"lengths must lie in 1..seq_len \(6\), got \[6, 7\]"),
    ({"lengths": [6, 0]}, InvalidArgumentError, "lengths must lie in 1..seq_len"),
    ({"lengths": [5, 3]}, InvalidArgumentError, "lengths reach 5 but seq_len is 6; pass seq_len=5"),
    ({"lengths": [6.0, 3.0]}, InvalidArgumentTypeError, r"lengths must hold ints, got 6.0 \(float\)"),
    ({"lengths": torch.full((2, 2), 6)}, InvalidArgumentError, r"lengths must be 1-D, .* got shape \(2, 2\)"),
    ({"lengths": 6}, InvalidArgumentTypeError, "lengths must be a sequence of ints .* got int"),
    (
        {"measure": "hidden", "contributions": True, "lengths": [6, 3]},
        InvalidArgumentError,
        "contributions=True .* needs samples of one length",
    ),
    ({"inputs": packed_batch([6, 3]), "lengths": [6, 3]}, InvalidArgumentError, "carries its own lengths"),
    ({"inputs": packed_batch([5, 3])}, InvalidArgumentError, "inputs has 5 timesteps .* pass seq_len=5"),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), BAD_ARGUMENTS)
def test_bad_state_arguments_raise_before_the_forward_pass(kwargs, error, words):
    model = Spy()
    with pytest.raises(error, match=words) as info:
        probe(model, 6, **kwargs)
    assert isinstance(info.value, GradHealthError)
    assert model.calls == 0


BAD_MODELS = [
    (
        lambda: Spy(nn.LSTM(3, 5, batch_first=True, bidirectional=True)),
        ModelInterfaceError,
        "'rnns.0' is a bidirectional LSTM: .* cannot be split in time .* use measure='input'",
    ),
    (
        lambda: Spy(nn.LSTM(3, 5, batch_first=True), nn.GRU(5, 5, batch_first=True)),
        InvalidArgumentError,
        "several recurrent modules, 'rnns.0' \\(LSTM\\), 'rnns.1' \\(GRU\\); pass module=",
    ),
    (lambda: nn.Sequential(nn.Linear(3, 3)), ModelInterfaceError, "Sequential has no nn.RNN/LSTM/GRU .* pass cell="),
    (lambda: CellLoop(nn.GRUCell(3, 5)), InvalidArgumentError, "'cell' is a GRUCell, which has none"),
]


@pytest.mark.parametrize(("build", "error", "words"), BAD_MODELS)
def test_models_whose_states_cannot_be_measured_are_refused_before_they_run(build, error, words):
    with pytest.raises(error, match=words):
        probe(build(), 6, input_size=3, measure="cell" if "GRUCell" in words else "hidden")


def test_a_plain_callable_needs_the_module_object():
    gru = nn.GRU(3, 5, batch_first=True)
    with pytest.raises(InvalidArgumentError, match="on a plain callable needs the recurrent module: pass module="):
        probe(lambda x: gru(x)[0], 6, input_size=3, measure="hidden")
    with pytest.raises(InvalidArgumentError, match="module='gru' is an attribute path, but the model is a plain"):
        probe(lambda x: gru(x)[0], 6, input_size=3, measure="hidden", module="gru")


def test_a_cell_has_one_layer_and_a_custom_cell_no_known_recurrent_weight():
    with pytest.raises(InvalidArgumentError, match="layer=1 was asked but 'cell' is a cell, which has one layer"):
        probe(CellLoop(nn.GRUCell(INPUT, HIDDEN)), 6, measure="hidden", layer=1)
    with pytest.raises(InvalidArgumentError, match="contributions=True needs .* 'cell' is a TanhCell"):
        probe(CellLoop(TanhCell()), 6, measure="hidden", cell="cell", contributions=True)


class Misused(nn.Module):
    """Calls its GRU `calls` times, on the timesteps `steps` of the input."""

    def __init__(self, calls: int, steps: slice = slice(None)) -> None:
        super().__init__()
        self.gru, self.calls, self.steps = nn.GRU(3, 3, batch_first=True), calls, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((self.gru(x[:, self.steps])[0] for _ in range(self.calls)), x[:, self.steps])


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (Misused(calls=2), "calls its GRU more than once per forward pass"),
        (Misused(calls=1, steps=slice(1, None)), "runs its GRU over 5 timesteps but seq_len is 6"),
        (Misused(calls=0), "the model never called its GRU"),
    ],
)
def test_a_module_that_is_not_run_once_over_the_sequence_is_refused(model, words):
    with pytest.raises(ModelInterfaceError, match=words):
        probe(model, 6, measure="hidden")


def test_a_cell_called_other_than_once_per_step_is_refused():
    class TwoCalls(CellLoop):
        def forward(self, x):
            return super().forward(torch.cat([x, x], 1))

    with pytest.raises(ModelInterfaceError, match=r"was called 12 time\(s\) .* one call per timestep \(6\)"):
        probe(TwoCalls(nn.RNNCell(INPUT, HIDDEN)), 6, measure="hidden")


@pytest.mark.usefixtures("path")
def test_the_final_state_the_module_returns_is_a_path_to_the_loss_too():
    # The loss reads the bottom layer's h_n and c_n as well as the top layer's output.
    lstm = fused(nn.LSTM, 2)
    x, v = inputs_and_projection()

    def loss_fn(output):
        top, (h_n, c_n) = output
        return ((top[:, -1] + h_n[0] + c_n[0]) * v).sum()

    ref = Unrolled(lstm, x)
    loss = ((ref.h[1][-1] + ref.h[0][-1] + ref.c[0][-1]) * v).sum()
    for measure, measured in (("hidden", ref.h[0]), ("cell", ref.c[0])):
        profile = probe(lstm, SEQ_LEN, inputs=x, loss_fn=loss_fn, measure=measure, layer=0, checkpoints=3)
        np.testing.assert_allclose(profile.norms, ref.norms(loss, measured, profile.steps)[0], rtol=REL)
