import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_init():
    """Models below are built from PyTorch's default initialisation: seed it so every run measures the same model."""
    torch.manual_seed(0)
