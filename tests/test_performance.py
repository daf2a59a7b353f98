"""The probe's fast paths (issue 15) give the same answers as the plain computations they replace."""

from __future__ import annotations

import functools

import pytest
import torch

from pytest_gradhealth.engine import forward
from pytest_gradhealth.engine.taps import lstm, scans
from pytest_gradhealth.engine.taps.base import subnormal_steps


def exact_subnormal(g: torch.Tensor) -> list[bool]:
    """Per step (axis 1), whether any entry of a (batch, seq, features) tensor is nonzero and below the smallest
    normal number, one entry at a time in Python."""
    tiny = torch.finfo(g.dtype).tiny
    return [any(0 < abs(float(v)) < tiny for v in g[:, t].flatten()) for t in range(g.shape[1])]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_subnormal_steps_are_the_entries_between_zero_and_the_smallest_normal_number(dtype):
    info = torch.finfo(dtype)
    g = torch.ones(2, 6, 3, dtype=dtype)
    g[0, 0, 0] = 0.0  # zero: not subnormal
    g[1, 1, 2] = info.tiny  # the smallest normal number: not subnormal
    g[0, 2, 1] = -info.tiny * info.eps  # the smallest subnormal number, negative
    g[1, 3, 0] = info.tiny - info.tiny * info.eps  # the largest subnormal number
    g[0, 4, 2] = float("nan")  # NaN and inf take the exact test and are not subnormal
    g[1, 5, 1] = float("inf")
    expected = [False, False, True, True, False, False]
    assert exact_subnormal(g) == expected
    assert subnormal_steps([g], "batch-time-feature").tolist() == expected
    assert not subnormal_steps([torch.ones(2, 6, 3, dtype=dtype)], "batch-time-feature").any()


def test_subnormal_steps_of_one_gradient_per_step_and_of_a_time_major_one():
    g = torch.ones(2, 4, 3)
    g[1, 2, 0] = 1e-40
    assert subnormal_steps([g[:, t] for t in range(4)], "batch-time-feature").tolist() == [False, False, True, False]
    assert subnormal_steps([g.transpose(0, 1)], "time-batch-feature").tolist() == [False, False, True, False]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [3, 32, 127, 128, 1000])
def test_the_blocked_scan_is_the_sequential_recurrence_at_long_lengths(length, reverse):
    gen = torch.Generator().manual_seed(length)
    a = torch.rand(length, 3, generator=gen, dtype=torch.float64) * 1.9 - 0.95
    b = torch.randn(length, 3, generator=gen, dtype=torch.float64)
    y, expected = torch.zeros(3, dtype=torch.float64), torch.empty_like(b)
    for t in range(length - 1, -1, -1) if reverse else range(length):
        y = expected[t] = a[t] * y + b[t]
    torch.testing.assert_close(scans.linear_scan(a, b, reverse=reverse), expected, rtol=1e-12, atol=1e-12)


def test_tanh_by_the_sigmoid_is_tanh():
    x = torch.linspace(-30, 30, 10001, dtype=torch.float64)
    torch.testing.assert_close(lstm.tanh(x), torch.tanh(x), rtol=0, atol=4e-16)


def test_the_pre_activations_are_the_gate_products():
    cell = torch.nn.LSTMCell(3, 4).double()
    x, h = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    expected = x @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh
    rows = slice(4, 12)
    torch.testing.assert_close(lstm.pre_activations(x, h, cell, "", rows), expected[..., rows], rtol=1e-14, atol=0)


class TwoStates(torch.nn.Module):
    def forward(self, x, h, c, scale=1.0):
        return x


def test_the_required_arguments_of_a_forward_are_read_once_per_function(monkeypatch):
    calls = []
    signature = forward.inspect.signature
    monkeypatch.setattr(forward.inspect, "signature", lambda f: calls.append(f) or signature(f))
    first, second = TwoStates(), TwoStates()
    assert forward._state_arguments(first, 3) == [None, None]
    assert forward._state_arguments(second, 3) == [None, None]  # another instance of the class: same function
    assert len(calls) == 1

    def plain(x, h):  # the same reading for a plain callable, whose signature has no self
        return x

    assert forward._state_arguments(plain, 3) == [None]
    assert forward._state_arguments(functools.partial(plain, h=None), 3) == []
    assert forward._state_arguments(len, 3) == []  # a builtin: no signature, nothing passed
