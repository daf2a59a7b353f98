"""Long sequences in bounded memory: an nn.RNN/LSTM/GRU run in time segments whose graphs are rebuilt in backward.

A fused recurrent module on CPU leaves autograd nodes and small tensors for every step (about 5 KB per step for an
nn.RNN(2, 2) at batch 8, whatever its size), so a probe of 10**6 steps held 6 GB until its backward pass. For probes
of `SEGMENT_FROM_STEPS` or more, the input tap runs each unidirectional fused module of the model in segments of
about sqrt(seq) steps: each segment runs without a graph and keeps only its input and initial state; backward reruns
it with a graph, one segment at a time, and returns the gradients of its input and initial state. The values are the
module's own (the same fused kernel on the same steps); the memory held until backward is the inputs, the outputs and
one state per segment, plus one segment's graph at a time.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from pytest_gradhealth.engine import aten
from pytest_gradhealth.engine.taps.base import stand_in_forward

# Probes that run this many steps or more run their fused modules in segments (the memory check starts there too).
SEGMENT_FROM_STEPS = 2**14


# The forwards whose computation a segmented run repeats: a subclass with a forward of its own is left as it is.
_STOCK_FORWARDS = (nn.RNN.forward, nn.LSTM.forward, nn.GRU.forward)


def segmentable(module: nn.Module) -> bool:
    """An nn.RNN/LSTM/GRU with its stock forward that runs forward in time only: its segments can run in turn."""
    return (
        isinstance(module, nn.RNNBase)
        and type(module).forward in _STOCK_FORWARDS
        and module.mode in aten.FUSED_OPS
        and not module.bidirectional
    )


def run_in_segments(model: Any, steps: int, stack: contextlib.ExitStack, segment: int | None = None) -> None:
    """Until `stack` closes, run every segmentable module of `model` in segments of `segment` steps (about
    sqrt(steps) when None)."""
    if not isinstance(model, nn.Module):
        return
    length = segment or max(1, math.isqrt(steps))
    for module in model.modules():
        if segmentable(module):
            stand_in_forward(module, Segmented(module, length), stack)


class Segmented:
    """Stands in for a fused module's forward: the same kernel over segments of `length` steps."""

    def __init__(self, module: nn.RNNBase, length: int) -> None:
        self.module, self.length = module, length

    def __call__(self, input: Any, hx: Any = None) -> tuple[Any, Any]:
        module = self.module
        lstm = module.mode == "LSTM"
        dropout = module.training and module.dropout > 0 and module.num_layers > 1
        if isinstance(input, PackedSequence) or input.dim() != 3 or dropout or not torch.is_grad_enabled():
            return type(module).forward(module, input, hx)  # its own forward: packed, unbatched or random
        x = input.transpose(0, 1) if module.batch_first else input
        state = aten.initial_states(module, x, hx)
        pieces = []
        for start in range(0, x.shape[0], self.length):
            out, *state = Segment.apply(self._run, x[start : start + self.length], *state)
            pieces.append(out)
        output = torch.cat(pieces)
        output = output.transpose(0, 1) if module.batch_first else output
        return output, tuple(state) if lstm else state[0]

    def _run(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        module = self.module
        hx = state if module.mode == "LSTM" else state[0]
        return aten.FUSED_OPS[module.mode](
            x, hx, module._flat_weights, module.bias, module.num_layers, module.dropout, module.training, False, False
        )


class Segment(torch.autograd.Function):
    """One segment: run without a graph, rerun with one in backward for the gradients of its input and state.

    Only those: the probe differentiates with respect to its own tensors, never the model's parameters."""

    @staticmethod
    def forward(ctx: Any, run: Any, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.run = run
        ctx.save_for_backward(x, *state)
        with torch.no_grad():
            return tuple(run(x, state))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *state = ctx.saved_tensors
        inputs = [
            t.detach().requires_grad_(need) for t, need in zip((x, *state), ctx.needs_input_grad[1:], strict=True)
        ]
        wanted = [t for t in inputs if t.requires_grad]
        if not wanted:
            return (None,) * (1 + len(inputs))
        with torch.enable_grad():
            outputs = ctx.run(inputs[0], tuple(inputs[1:]))
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        return (None, *(next(found) if t.requires_grad else None for t in inputs))
