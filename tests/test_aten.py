"""The undocumented fused kernels the state taps call give exactly what nn.RNN/LSTM/GRU give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_gradhealth.engine import aten

MODULES = [
    (nn.RNN, {}),
    (nn.RNN, {"nonlinearity": "relu"}),
    (nn.GRU, {}),
    (nn.LSTM, {}),
    (nn.LSTM, {"proj_size": 3}),
    (nn.GRU, {"bias": False}),
]


@pytest.mark.parametrize(("cls", "kwargs"), MODULES, ids=lambda p: getattr(p, "__name__", str(p)))
@pytest.mark.parametrize("training", [False, True])
def test_one_layer_through_aten_equals_the_module(cls, kwargs, training):
    torch.manual_seed(0)
    module = cls(4, 5, **kwargs).train(training)
    x = torch.randn(7, 2, 4)
    expected, final = module(x)
    lstm = isinstance(module, nn.LSTM)
    state = torch.zeros(1, 2, module.proj_size or module.hidden_size)
    hx = (state, torch.zeros(1, 2, module.hidden_size)) if lstm else state
    weights = [getattr(module, name) for name in module._flat_weights_names]
    out, *finals = aten.run_layer(module, x, hx, weights)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for got, want in zip(finals, final if lstm else (final,), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_every_mode_of_nn_rnnbase_has_a_kernel():
    modes = {nn.RNN(2, 2).mode, nn.RNN(2, 2, nonlinearity="relu").mode, nn.LSTM(2, 2).mode, nn.GRU(2, 2).mode}
    assert modes == set(aten.FUSED_OPS)


@pytest.mark.parametrize(("cls", "kwargs"), MODULES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_one_step_through_the_cells_op_equals_the_modules_step(cls, kwargs):
    torch.manual_seed(0)
    module = cls(4, 5, dtype=torch.float64, **kwargs)
    if not aten.steps_alone(module):
        assert isinstance(module, nn.LSTM) and module.proj_size  # no cell op has projections
        return
    x = torch.randn(1, 2, 4, dtype=torch.float64)
    lstm = isinstance(module, nn.LSTM)
    h0 = torch.randn(1, 2, 5, dtype=torch.float64)
    hx = (h0, torch.randn(1, 2, 5, dtype=torch.float64)) if lstm else h0
    _, final = module(x, hx)
    weights = [getattr(module, name) for name in module._flat_weights_names]
    got = aten.run_step(module, x[0], tuple(h[0] for h in hx) if lstm else (h0[0],), weights)
    for state, want in zip(got, final if lstm else (final,), strict=True):
        torch.testing.assert_close(state, want[0], rtol=1e-14, atol=1e-14)
