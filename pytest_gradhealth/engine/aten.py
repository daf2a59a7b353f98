"""The one place that calls PyTorch's undocumented fused recurrent kernels (`torch.lstm`, `torch.gru`, ...).

nn.RNN/LSTM/GRU run their whole sequence in one of these ATen calls; the state taps call them directly on a chunk of
a single layer. They are not public API: `tests/test_aten.py` pins their results to the nn modules' outputs, so a
PyTorch release that changes them fails there first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# By nn.RNNBase.mode.
FUSED_OPS: dict[str, Callable[..., Any]] = {
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
    "LSTM": torch.lstm,
    "GRU": torch.gru,
}


def run_layer(
    module: nn.RNNBase, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, ...], weights: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """One unidirectional layer of `module`'s kind over time-major `x` from state `hx` with the given weights.

    `weights`: weight_ih, weight_hh, then bias_ih, bias_hh when the module has biases, then weight_hr (LSTM
    projections). Returns the output (seq, batch, hidden) and the final state(s), each (1, batch, hidden).
    """
    op = FUSED_OPS[module.mode]
    return op(x, hx, list(weights), module.bias, 1, 0.0, module.training, False, False)
