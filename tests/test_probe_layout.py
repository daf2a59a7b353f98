"""The layout the probe feeds a model: the model's own, or the one asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import GradientHealthError, assert_no_vanishing, probe


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_time_major_module_is_probed_in_its_own_layout(cls):
    torch.manual_seed(0)
    time_major = cls(4, 6)  # PyTorch's default: batch_first=False
    batch_major = cls(4, 6, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    a, b = probe(time_major, 12), probe(batch_major, 12)
    assert a.underflow_steps.size == 0
    np.testing.assert_allclose(a.norms, b.norms, rtol=1e-5)


def test_an_explicit_layout_wins_and_a_gradient_that_reaches_no_earlier_step_says_so():
    with pytest.raises(GradientHealthError, match="no gradient at all reaches any step before the last.*batch_first"):
        assert_no_vanishing(nn.LSTM(4, 6), 10, batch_first=True)
