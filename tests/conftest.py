from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from torch import nn

# torch.manual_seed imports torch._dynamo on first use, which registers an operator library once per process. Imported
# first inside an in-process pytester run, it would be taken out of sys.modules after it, and the next import would
# register the library again and fail: import it here, before any test runs.

# Under xdist each worker gets one core's worth of threads: oversubscribed intra-op threads spin and crawl.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def model_state(model: nn.Module) -> dict:
    """Everything the probe promises to leave alone, captured for comparison."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "grads": {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "dtype_device": {n: (p.dtype, p.device) for n, p in model.named_parameters()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    for kind in ("params", "buffers"):
        assert before[kind].keys() == after[kind].keys()
        for name, tensor in before[kind].items():
            other = after[kind][name]
            assert tensor.dtype == other.dtype and torch.equal(tensor, other), f"{kind} {name} changed"
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        if grad is None:
            assert other is None, f".grad of {name} was None and is now set"
        else:
            assert other is not None and torch.equal(grad, other), f".grad of {name} changed"
    for kind in ("requires_grad", "training", "dtype_device"):
        assert before[kind] == after[kind], f"{kind} changed"


def rng_state() -> torch.Tensor:
    return torch.get_rng_state().clone()


@pytest.fixture
def state_guard():
    """Call with a model: asserts after the test body that model and global RNG are as they were."""
    checks = []

    def guard(model: nn.Module) -> nn.Module:
        checks.append((model, model_state(model), rng_state()))
        return model

    yield guard
    for model, before, rng in checks:
        assert_same_state(before, model_state(model))
        assert torch.equal(rng, rng_state()), "global torch RNG state changed"
