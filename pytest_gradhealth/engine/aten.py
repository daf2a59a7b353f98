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


# One step of the same computation, by mode: what nn.RNNCell/LSTMCell/GRUCell call. A fused call has a fixed cost
# (on CPU about 0.35 ms forward and backward for an LSTM) that one step of a cell does not pay.
CELL_OPS: dict[str, Callable[..., Any]] = {
    "RNN_TANH": torch.rnn_tanh_cell,
    "RNN_RELU": torch.rnn_relu_cell,
    "LSTM": torch.lstm_cell,
    "GRU": torch.gru_cell,
}


def initial_states(module: nn.RNNBase, x: torch.Tensor, hx: Any) -> tuple[torch.Tensor, ...]:
    """The module's initial state as a tuple, h (and c for an LSTM), each (layers, batch, size): `hx` as the model
    passed it, or zeros when it passed none. `x` is the time-major input."""
    lstm = module.mode == "LSTM"
    if hx is not None:
        return tuple(hx) if lstm else (hx,)
    sizes = [module.proj_size or module.hidden_size, module.hidden_size] if lstm else [module.hidden_size]
    return tuple(x.new_zeros(module.num_layers, x.shape[1], size) for size in sizes)


def run_layer(
    module: nn.RNNBase, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, ...], weights: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """One unidirectional layer of `module`'s kind over time-major `x` from state `hx` with the given weights.

    `weights`: weight_ih, weight_hh, then bias_ih, bias_hh when the module has biases, then weight_hr (LSTM
    projections). Returns the output (seq, batch, hidden) and the final state(s), each (1, batch, hidden).
    """
    op = FUSED_OPS[module.mode]
    return op(x, hx, list(weights), module.bias, 1, 0.0, module.training, False, False)


def steps_alone(module: nn.RNNBase) -> bool:
    """Whether `run_step` can run `module`'s steps: every mode but an LSTM with projections, which no cell op has."""
    return not (module.mode == "LSTM" and module.proj_size)


def run_step(
    module: nn.RNNBase, x: torch.Tensor, state: tuple[torch.Tensor, ...], weights: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """One step of one layer of `module` (see `steps_alone`): input `x` (batch, input), `state` h (and c), each
    (batch, hidden), weights as for `run_layer` without projections. Returns the new state(s) in the same form."""
    new = CELL_OPS[module.mode](x, state if module.mode == "LSTM" else state[0], *weights)
    return tuple(new) if isinstance(new, tuple) else (new,)
