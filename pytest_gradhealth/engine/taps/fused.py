"""The fused-state tap: dL/dh_t (and dL/dc_t) of an nn.RNN/LSTM/GRU, whose per-step states autograd cannot see.

For the probe's one forward pass the module's forward is replaced by the same computation run layer by layer through
`aten.run_layer`, in one of two ways:

- Split in time (any module, both measures): the measured layer is split after each measured step, one call of the
  fused kernel per chunk (a chunk of one step: the cell's op, `aten.run_step`), each starting from the previous
  chunk's final state. That state is one tensor, used as the next chunk's initial state and as the layer's output at
  that step, so its gradient is the total derivative. The cell state's path through h_t is internal to the kernel and
  is added from the recomputed output gate (an LSTM's cell state is therefore never run by the cell's op).
- One call (measure="hidden" of an nn.RNN or nn.LSTM): h_{t-1} enters step t only through the term W_hh h_{t-1} of
  the pre-activation, so the layer runs once with an extra input u = 0 (seq, batch, hidden) whose weight is W_hh
  ([x_t, u_t] times [W_ih, W_hh]): the values are unchanged, and dL/du_t = W_hh^T dL/dpre_t is the gradient of h_{t-1}
  along its path into step t. dL/dh_t is the gradient at the layer's output at step t (the layer above, the model's
  output, and the final state, which is read from the output) plus dL/du_{t+1}. Not for a GRU, whose h_{t-1} also
  enters inside r_t * (W_hn h_{t-1} + b_hn), nor for the cell state, whose path into step t+1 is not additive.
  Each fused call has a fixed cost (about 0.35 ms forward and backward on CPU), which is what this path saves.
  A GRU's extra zero input has the identity as its weight instead, so its gradient is that of every gate's
  pre-activation; an LSTM's cell state and a GRU's path through z_t * h_{t-1} are then added by scans over the
  recomputed gates (`scans.py`). The cell state takes this path only where nothing splits the measured layer.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from pytest_gradhealth.engine import aten
from pytest_gradhealth.engine.sequences import Window, measured_at
from pytest_gradhealth.engine.taps import lstm, scans
from pytest_gradhealth.engine.taps.base import StateRequest, TapResult, stacked_result, stand_in_forward
from pytest_gradhealth.errors import ModelInterfaceError

if TYPE_CHECKING:
    from pytest_gradhealth.engine.renormalise import Renormaliser

# Which way a fused layer is measured, where both can. The split path pays a fixed cost per call of the fused kernel
# (on CPU about 0.35 ms forward and backward for an LSTM); the one-call path a fused pass about 1.3 to 1.5 times as
# long (its input projection is wider by W_hh). So splitting is the cheaper where its chunks are long and each step is
# expensive: in float32 on 2 CPU cores (nn.RNN and nn.LSTM, hidden 64 to 256, batch 8, 4 to 512 chunks), where each
# chunk holds at least about this much work, in steps x batch x hidden_size^2. A chunk of one step runs the cell's
# op instead (`aten.run_step`), which pays no such cost: an nn.RNN or nn.GRU measured at every step is split, 1.2x to
# 1.5x a fused pass where the one-call path took 1.4x to 2.1x (hidden 64 to 256; a GRU's one-call input projection is
# wider by 3 x hidden). An LSTM's cell op is slower than its fused kernel (an nn.LSTMCell loop is 2x to 6x the fused
# pass), so an LSTM keeps the one-call path.
SPLIT_MIN_WORK = 2**22


def layer_weights(module: nn.RNNBase, layer: int) -> list[str]:
    """The names of one layer's weights in the order `aten.run_layer` takes them."""
    names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
    if module.bias:
        names += [f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
    if module.mode == "LSTM" and module.proj_size:
        names.append(f"weight_hr_l{layer}")
    return names


def one_call(
    module: nn.RNNBase, request: StateRequest, batch_steps_per_chunk: float, cut: bool, every_step: bool
) -> bool:
    """Whether the measured layer runs in one fused call with a zero recurrent input instead of split in time.

    `batch_steps_per_chunk`: batch size times the split path's mean chunk length. `cut`: the layer is split before
    its last step anyway (a packed batch's final states), where the cell state's own gradient would mix two paths.
    `every_step`: the split path's chunks are single steps.
    """
    if request.contributions or (request.measure == "cell" and cut):
        return False
    if every_step and module.mode != "LSTM":
        return False
    return batch_steps_per_chunk * module.hidden_size**2 < SPLIT_MIN_WORK


class FusedStatesTap:
    """Stands in for an nn.RNN/LSTM/GRU's forward for one call: layer by layer, the measured layer split in time."""

    def __init__(self, path: str | None, module: nn.RNNBase, window: Window, request: StateRequest) -> None:
        self.path, self.module, self.window, self.request = path, module, window, request
        self.layer = request.layer
        self.lstm = module.mode == "LSTM"
        self.one_call = False  # decided in __call__, where the batch is known
        self.measured_at = measured_at(window.steps, window.lengths, window.seq_len)  # every sample's own steps
        self.aliased = set(window.steps.tolist()) if request.contributions else set()
        self.calls = 0
        self.cuts: list[int] = []
        self.states: dict[int, tuple[torch.Tensor, ...]] = {}
        self.aliases: dict[str, list[torch.Tensor]] = {}
        self.inputs = self.outputs = self.initial = self.initial_cell = torch.empty(0)  # initial: h_0, c_0
        self.layer_output = self.recurrent = torch.empty(0)  # the one-call path's measured tensors: output and u
        self.renormaliser: Renormaliser | None = None  # set for a renormalised pass: split, states handed on rescaled

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        if self.path is not None:  # the same module in `model`, which may be a converted copy of the user's
            self.module = model.get_submodule(self.path)
        stand_in_forward(self.module, self, stack)
        return x

    def __call__(self, input: torch.Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
        module = self.module
        self.calls += 1
        if self.calls > 1:
            raise ModelInterfaceError(
                f"the model calls its {type(module).__name__} more than once per forward pass; the probe measures "
                "the states of a module that runs the sequence once"
            )
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)
            last = [int(n) - 1 for n in lengths]  # each sample's last step, where its final state is
        else:
            if input.dim() != 3:
                raise ModelInterfaceError(
                    f"the model calls its {type(module).__name__} with a {input.dim()}-D input; the probe measures "
                    "batched sequences (3-D, or a PackedSequence)"
                )
            x = input.transpose(0, 1) if module.batch_first else input
            last = [x.shape[0] - 1]
        if x.shape[0] != self.window.seq_len:
            raise ModelInterfaceError(
                f"the model runs its {type(module).__name__} over {x.shape[0]} timesteps but seq_len is "
                f"{self.window.seq_len}; the measured states must be the probe's timesteps"
            )
        initial = self._initial_states(x, hx)
        ends = set(self.renormaliser.ends) if self.renormaliser else set()  # where a renormalised pass rescales
        unmeasured = {x.shape[0] - 1, *last, *self.aliased}
        split = sorted({*unmeasured, *ends, *self.measured_at})
        work = x.shape[0] * x.shape[1] / len(split)
        self.one_call = one_call(module, self.request, work, len(unmeasured) > 1, len(split) == x.shape[0])
        unmeasured |= ends
        finals = []
        for layer in range(module.num_layers):
            measured = layer == self.layer
            cuts = split if measured and not self.one_call else sorted(unmeasured)
            out, states = self._run_layer(layer, x, initial[layer], cuts, measured and self.one_call)
            if measured:
                self.cuts, self.states, self.layer_output = cuts, states, out
                self.inputs, self.outputs = x.detach(), out.detach()
                self.initial, self.initial_cell = initial[layer][0].detach(), initial[layer][-1].detach()
            # h_n is read from the output, so that the output's gradient includes the path through it.
            h_n = out[last, torch.arange(out.shape[1], device=out.device)]
            finals.append((h_n, *(_own_steps(states, last) if packed else states[x.shape[0] - 1])[1:]))
            x = out
            if layer < module.num_layers - 1 and module.dropout:
                x = nn.functional.dropout(x, module.dropout, module.training)
        hidden = tuple(torch.stack([f[k] for f in finals]) for k in range(len(finals[0])))
        if packed:
            output: Any = _pack_like(x, input)
        else:
            output = x.transpose(0, 1) if module.batch_first else x
        return output, hidden if self.lstm else hidden[0]

    def _initial_states(self, x: torch.Tensor, hx: Any) -> list[tuple[torch.Tensor, ...]]:
        module = self.module
        if self.renormaliser is not None:
            self.renormaliser.computed_state(module, hx)
        hx = aten.initial_states(module, x, hx)
        states = [tuple(h[layer] for h in hx) for layer in range(module.num_layers)]
        # A leaf that needs a gradient, so that every state after it is on the autograd graph.
        states[self.layer] = tuple(
            s if s.requires_grad else s.detach().requires_grad_(True) for s in states[self.layer]
        )
        return states

    def _run_layer(
        self, layer: int, x: torch.Tensor, state: tuple[torch.Tensor, ...], cuts: list[int], zero_recurrent: bool
    ) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, ...]]]:
        """One layer over the sequence, one fused call per chunk; the state after each chunk's last step.

        `zero_recurrent`: the input gets the extra zero input u (`self.recurrent`) through W_hh, for the one-call path.
        """
        names = layer_weights(self.module, layer)
        weights = [getattr(self.module, name) for name in names]
        if zero_recurrent:  # a GRU's: the identity, so that dL/du_t is dL/dpre_t of every gate
            gru = self.module.mode == "GRU"
            extra = torch.eye(weights[0].shape[0], dtype=x.dtype, device=x.device) if gru else weights[1]
            self.recurrent = x.new_zeros(*x.shape[:2], extra.shape[1]).requires_grad_(True)
            x = torch.cat([x, self.recurrent], dim=-1)
            weights[0] = torch.cat([weights[0], extra], dim=1)
        recurrent = [i for i, name in enumerate(names) if name.startswith(("weight_hh", "weight_hr"))]
        # Not for an LSTM's cell state: the cell's op puts h_t = o_t * tanh(c_t) on the graph, where the fused kernel
        # keeps it inside and `result` adds that path itself.
        alone = aten.steps_alone(self.module) and not (self.lstm and self.request.measure == "cell")
        pieces, states, start = [], {}, 0
        for end in cuts:
            chunks = [(start, end, False)]
            if end in self.aliased:  # the step on its own, with its own copy of the recurrent weights
                chunks = [(start, end - 1, False), (end, end, True)] if start < end else [(end, end, True)]
            for first, last, aliased in chunks:
                used = list(weights)
                if aliased:
                    for i in recurrent:
                        used[i] = weights[i].detach().requires_grad_(True)
                        self.aliases.setdefault(names[i], []).append(used[i])
                if first == last and alone:  # one step: the cell's op, without a fused call's fixed cost
                    states[last] = aten.run_step(self.module, x[first], state, used)
                    pieces.append(states[last][0])
                else:
                    hx = tuple(s[None] for s in state) if self.lstm else state[0][None]
                    out, *final = aten.run_layer(self.module, x[first : last + 1], hx, used)
                    states[last] = tuple(f.squeeze(0) for f in final)  # views: their backward copies nothing
                    # The state is the output at the chunk's last step too: one tensor, as in an unrolled loop.
                    pieces += [out[:-1], states[last][0]]
                state = states[last] if self.renormaliser is None else self.renormaliser.carry(last, states[last])
            start = end + 1
        if all(piece.dim() == 2 for piece in pieces):  # every chunk one step: one stack, no view per step
            return torch.stack(pieces), states
        return torch.cat([piece[None] if piece.dim() == 2 else piece for piece in pieces]), states

    def measured(self) -> list[torch.Tensor]:
        """The tensors to differentiate: the measured layer's states at the cuts, then the weight copies."""
        if self.calls == 0:
            raise ModelInterfaceError(
                f"the model never called its {type(self.module).__name__} in the forward pass, so it has no states "
                "to measure; pass module= naming the one it uses"
            )
        if self.one_call:  # and the states at the cuts: each chunk's last step, where the next chunk takes them on
            cell = [self.states[t][1] for t in self.cuts] if self.request.measure == "cell" else []
            return [self.layer_output, self.recurrent, *(self.states[t][0] for t in self.cuts), *cell]
        tensors = [self.states[t][0] for t in self.cuts]
        if self.request.measure == "cell":
            tensors += [self.states[t][1] for t in self.cuts]
        return tensors + [a for copies in self.aliases.values() for a in copies]

    @torch.no_grad()
    def result(self, grads: list[torch.Tensor]) -> TapResult:
        if self.one_call:
            at = self.measured_at
            g = self._every_step(grads)
            if len(at) < g.shape[0]:  # else every step, in order
                g = g[torch.tensor(at, device=g.device)]
            return stacked_result(g, np.asarray(at), self.window)
        n = len(self.cuts)
        g = torch.stack(grads[:n])
        if self.request.measure == "cell":
            cuts = torch.tensor(self.cuts, device=g.device)
            h_prev = self._previous_hidden()[cuts]
            c = torch.stack([self.states[t][1] for t in self.cuts])
            g = torch.stack(grads[n : 2 * n]) + lstm.through_hidden(
                g, self.inputs[cuts], h_prev, c, self.module, f"_l{self.layer}"
            )
            n *= 2
        return stacked_result(g, np.asarray(self.cuts), self.window, lstm.contributions(self.aliases, grads[n:]))

    def _previous_hidden(self) -> torch.Tensor:
        """h_{t-1} of the measured layer at every step t."""
        return torch.cat([self.initial[None], self.outputs[:-1]])

    def _every_step(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The one-call path's dL/dh_t (or dL/dc_t) at every step, from the gradients at `measured()`, chunk by chunk.

        Within a chunk, dL/dh_t is the gradient at the output at step t plus dL/du_{t+1}, h_t's path into step t+1; at
        a chunk's last step it is the gradient at the state there, which the next chunk takes on (rescaled, in a
        renormalised pass: the chunks' gradients are each in their own scale, so nothing crosses a cut here).
        """
        suffix = f"_l{self.layer}"
        n = len(self.cuts)
        at_state, at_cell = grads[2 : 2 + n], grads[2 + n : 2 + 2 * n]
        h_prev = self._previous_hidden()
        pieces, start = [], 0
        for j, end in enumerate(self.cuts):
            steps = slice(start, end + 1)
            at_output = grads[0][steps].clone()
            if self.module.mode == "GRU":
                at_output[-1] = at_state[j]
                pieces.append(
                    scans.gru_hidden(at_output, grads[1][steps], self.inputs[steps], h_prev[steps], self.module, suffix)
                )
            else:  # u_{t+1}'s gradient is h_t's path into step t+1; the chunk's last state hands it on itself
                hidden = at_output
                hidden[:-1] += grads[1][start + 1 : end + 1]
                hidden[-1] = at_state[j]
                if self.request.measure == "cell":
                    cell = self.initial_cell if j == 0 else self.states[self.cuts[j - 1]][1].detach()
                    hidden = scans.lstm_cell(
                        hidden,
                        at_cell[j],
                        self.inputs[steps],
                        h_prev[steps],
                        self.outputs[steps],
                        cell,
                        self.module,
                        suffix,
                    )
                pieces.append(hidden)
            start = end + 1
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _own_steps(states: dict[int, tuple[torch.Tensor, ...]], steps: list[int]) -> tuple[torch.Tensor, ...]:
    """Each sample's state after its own step: sample b's after steps[b]."""
    parts = range(len(states[steps[0]]))
    return tuple(torch.stack([states[t][k][b] for b, t in enumerate(steps)]) for k in parts)


def _pack_like(padded: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """A (seq, batch, ...) tensor packed with the same batch sizes and sample order as `like`."""
    batch_sizes = like.batch_sizes
    order = like.sorted_indices
    if order is None:
        order = torch.arange(padded.shape[1])
    order = order.to(padded.device)
    time = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes).to(padded.device)
    samples = torch.cat([order[:n] for n in batch_sizes.tolist()])
    return PackedSequence(padded[time, samples], batch_sizes, like.sorted_indices, like.unsorted_indices)
