"""The gradhealth fixture with inputs of the user's own: the batch comes from them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_gradhealth.fixture import GradHealth
from pytest_gradhealth.settings import Settings


@pytest.mark.parametrize("key", ["inputs", "lengths"])
def test_the_fixture_takes_the_batch_from_given_inputs(key):
    fixture = GradHealth(Settings(batch_size=8))
    lstm = nn.LSTM(4, 6, batch_first=True)
    options = {"inputs": torch.randn(3, 10, 4)} if key == "inputs" else {"lengths": [10, 6, 2], "measure": "hidden"}
    assert fixture.probe(lstm, 10, **options).batch_size == 3
