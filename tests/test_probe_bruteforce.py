"""The probe's profile equals the one built from each timestep's gradient taken separately with autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe


def brute_force_norms(model: nn.Module, x: torch.Tensor, v: torch.Tensor, batch_first: bool) -> np.ndarray:
    """One leaf per timestep; the gradient of <v, y_T> with respect to each leaf computed on its own."""
    time_axis = 1 if batch_first else 0
    steps = [s.clone().requires_grad_(True) for s in x.unbind(time_axis)]
    out = model(torch.stack(steps, time_axis))[0]
    last = out[:, -1] if batch_first else out[-1]
    loss = (last * v).sum()
    norms = []
    for step in steps:
        (g,) = torch.autograd.grad(loss, step, retain_graph=True)
        norms.append(float(torch.sqrt(g.pow(2).sum(-1).mean())))
    return np.array(norms)


def probe_inputs_and_v(batch: int, seq_len: int, size: int, hidden: int, batch_first: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, seq_len, size), generator=gen, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1)
    v = torch.randn(hidden, generator=gen, dtype=torch.float64)
    return x, v / v.norm()


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
def test_profile_equals_per_step_autograd(cls, num_layers, batch_first):
    torch.manual_seed(3)
    model = cls(5, 7, num_layers=num_layers, batch_first=batch_first).double()
    seq_len, batch, seed = 12, 3, 11
    profile = probe(model, seq_len, batch_size=batch, seed=seed, batch_first=batch_first)
    x, v = probe_inputs_and_v(batch, seq_len, 5, 7, batch_first, seed)
    np.testing.assert_allclose(profile.norms, brute_force_norms(model, x, v, batch_first), rtol=1e-12)
