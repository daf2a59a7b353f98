"""Hidden- and cell-state gradients, per-timestep weight-gradient contributions, and padded batches.

`measure="hidden"` measures dL/dh_t and `measure="cell"` dL/dc_t, where h_t and c_t are the state after step t has
consumed x_t (t = 0 .. seq_len-1; the initial state is not measured). Both are total derivatives: every path from
the state to the loss counts (into step t+1, into the layer above or the model's output at step t, into the final
state the module returns, and for c_t also through h_t = o_t * tanh(c_t)), exactly what autograd gives for the states
of an unrolled loop of cells with the same weights.

Fused modules (nn.RNN/LSTM/GRU) hide their per-step states from autograd. For the probe's one forward pass their
forward is replaced by the same computation run layer by layer, in two ways:

- Split in time (any module, both measures): the measured layer is split after each measured step, one call of the
  fused kernel per chunk, each starting from the previous chunk's final state. That state is one tensor, used as the
  next chunk's initial state and as the layer's output at that step, so its gradient is the total derivative. The cell
  state's path through h_t is internal to the kernel and is added from the recomputed output gate.
- One call (measure="hidden" of an nn.RNN or nn.LSTM): h_{t-1} enters step t only through the term W_hh h_{t-1} of
  the pre-activation, so the layer runs once with an extra input u = 0 (seq, batch, hidden) whose weight is W_hh
  ([x_t, u_t] times [W_ih, W_hh]): the values are unchanged, and dL/du_t = W_hh^T dL/dpre_t is the gradient of h_{t-1}
  along its path into step t. dL/dh_t is the gradient at the layer's output at step t (the layer above, the model's
  output, and the final state, which is read from the output) plus dL/du_{t+1}. Not for a GRU, whose h_{t-1} also
  enters inside r_t * (W_hn h_{t-1} + b_hn), nor for the cell state, whose path into step t+1 is not additive.
  Each fused call has a fixed cost (about 0.35 ms forward and backward on CPU), which is what this path saves.

A loop over a cell module is measured at the cell's outputs, one per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from pytest_gradhealth.errors import InvalidArgumentError, InvalidArgumentTypeError, ModelInterfaceError

if TYPE_CHECKING:
    from pytest_gradhealth.probing import ProbeOptions

STATE_MEASURES = ("hidden", "cell")
_FUSED_OPS: dict[str, Callable[..., Any]] = {
    "RNN_TANH": torch.rnn_tanh,
    "RNN_RELU": torch.rnn_relu,
    "LSTM": torch.lstm,
    "GRU": torch.gru,
}
_BUILTIN_CELLS = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)


# -- measured steps and padded batches -----------------------------------------------------------------


def measured_steps(seq_len: int, checkpoints: int | None) -> np.ndarray:
    """Every timestep, or `checkpoints` evenly spaced ones (rounded to the nearest), always the first and the last."""
    if checkpoints is None:
        return np.arange(seq_len, dtype=np.int64)
    k = np.arange(checkpoints, dtype=np.int64)
    return (k * (seq_len - 1) + (checkpoints - 1) // 2) // (checkpoints - 1)


def normalise_lengths(lengths: Any, seq_len: int, batch: int | None) -> tuple[int, ...]:
    """`lengths=` as a tuple of ints, checked against the batch and seq_len."""
    if isinstance(lengths, (torch.Tensor, np.ndarray)):
        if lengths.ndim != 1:
            raise InvalidArgumentError(f"lengths must be 1-D, one length per sample, got shape {tuple(lengths.shape)}")
        lengths = lengths.tolist()
    if not isinstance(lengths, Sequence) or isinstance(lengths, str):
        raise InvalidArgumentTypeError(
            f"lengths must be a sequence of ints (one per sample), got {type(lengths).__name__}"
        )
    bad = [n for n in lengths if not isinstance(n, (int, np.integer)) or isinstance(n, bool)]
    if bad:
        raise InvalidArgumentTypeError(f"lengths must hold ints, got {bad[0]!r} ({type(bad[0]).__name__})")
    lengths = tuple(int(n) for n in lengths)
    if batch is not None and len(lengths) != batch:
        raise InvalidArgumentError(
            f"lengths has {len(lengths)} entries but the batch has {batch} samples; give one length per sample"
        )
    if not lengths or min(lengths) < 1 or max(lengths) > seq_len:
        raise InvalidArgumentError(f"lengths must lie in 1..seq_len ({seq_len}), got {list(lengths)}")
    if max(lengths) != seq_len:
        raise InvalidArgumentError(
            f"the longest sequence must fill seq_len: lengths reach {max(lengths)} but seq_len is {seq_len}; "
            f"pass seq_len={max(lengths)}"
        )
    return lengths


def packed_as_padded(packed: PackedSequence, batch_first: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A PackedSequence as a zero-padded tensor in the probe's layout, and its lengths in batch order."""
    padded, lengths = pad_packed_sequence(packed, batch_first=batch_first)
    return padded.detach(), tuple(int(n) for n in lengths)


def zero_padding(x: torch.Tensor, options: ProbeOptions) -> torch.Tensor:
    """Drawn inputs with zeros (token 0) past each sample's length, as a padded batch holds them."""
    real = torch.arange(options.seq_len)[None, :] < torch.tensor(options.lengths)[:, None]  # (batch, seq)
    if not options.batch_first:
        real = real.T
    real = real.reshape(*real.shape, *[1] * (x.dim() - 2)).to(x.device)
    return torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))


def last_steps(y: torch.Tensor, options: ProbeOptions) -> torch.Tensor:
    """The output at each sample's own last real step (the last step when no lengths were given)."""
    if options.lengths is None:
        return y[:, -1] if options.batch_first else y[-1]
    if not options.batch_first:
        y = y.transpose(0, 1)
    if y.shape[0] != len(options.lengths) or y.shape[1] < options.seq_len:
        raise ModelInterfaceError(
            f"the model's output has shape {tuple(y.shape)} (batch, seq, ...) but lengths= describes "
            f"{len(options.lengths)} samples of up to {options.seq_len} steps: the loss cannot be put on each "
            "sample's last real step; pass loss_fn= to define it"
        )
    last = torch.tensor(options.lengths, device=y.device) - 1
    return y[torch.arange(y.shape[0], device=y.device), last]


def by_lag(squares: np.ndarray, at: np.ndarray, options: ProbeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's squared gradient norm at the profile's steps, counted back from its own last real step.

    `squares[b, j]` belongs to absolute timestep `at[j]` of sample b. Profile step t is lag seq_len-1-t, which
    sample b reaches at its timestep lengths[b]-1-lag; `valid` is False where that is before its first step.
    """
    steps = options.steps
    if options.lengths is None and np.array_equal(at, steps):
        return squares, np.ones(squares.shape, dtype=bool)  # the common case: nothing to align, and no time spent
    lengths = np.asarray(options.lengths or (options.seq_len,) * squares.shape[0])
    lags = options.seq_len - 1 - steps
    absolute = lengths[:, None] - 1 - lags[None, :]
    valid = absolute >= 0
    columns = np.searchsorted(at, np.where(valid, absolute, at[0]))
    return np.take_along_axis(squares, columns, axis=1), valid


def batch_rms(squares: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Norms (RMS over the samples that reach each step) and per-sample norms (NaN where a sample does not)."""
    total = np.where(valid, squares, 0.0).sum(axis=0)
    return np.sqrt(total / valid.sum(axis=0)), np.where(valid, np.sqrt(squares), np.nan)


def _squares(grads: torch.Tensor) -> np.ndarray:
    """(steps, batch, ...) gradients to (batch, steps) squared norms in float64."""
    g = grads.detach().to(torch.float64)
    return g.reshape(g.shape[0], g.shape[1], -1).pow(2).sum(-1).T.cpu().numpy()


# -- finding the recurrent module ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The recurrent module whose states are measured, found in the model before it runs."""

    module: nn.Module
    path: str | None  # attribute path in the model ("" for the model itself); None in a plain callable
    fused: bool  # an nn.RNN/LSTM/GRU split in time, or a cell called once per timestep
    layer: int

    def locate(self, model: Any) -> nn.Module:
        """The same module in `model`, which may be a converted copy of the user's."""
        return self.module if self.path is None else model.get_submodule(self.path)


def find_target(model: Any, options: ProbeOptions) -> Target:
    """The module that `module=`/`cell=` name, or the model's only recurrent module; every check before it runs."""
    if options.cell is not None:
        module, path = _named(model, options.cell, "cell")
        if isinstance(module, nn.RNNBase):
            raise InvalidArgumentError(
                f"cell= names a module called once per timestep, but {_shown(path)} is an nn.{type(module).__name__} "
                "that runs the whole sequence; pass module= for it"
            )
        fused = False
    elif options.module is not None:
        module, path = _named(model, options.module, "module")
        if not isinstance(module, nn.RNNBase):
            raise InvalidArgumentError(
                f"module= must name an nn.RNN, nn.LSTM or nn.GRU, but {_shown(path)} is a {type(module).__name__}; "
                "for a module your model calls once per timestep, pass cell= instead"
            )
        fused = True
    else:
        module, path, fused = _only_recurrent_module(model, options.measure)
    return Target(module, path, fused, _check_target(module, path, fused, options))


def _shown(path: str | None) -> str:
    return "the model itself" if path == "" else ("the given module" if path is None else repr(path))


def _named(model: Any, spec: str | nn.Module, label: str) -> tuple[nn.Module, str | None]:
    if not isinstance(model, nn.Module):
        if isinstance(spec, str):
            raise InvalidArgumentError(
                f"{label}={spec!r} is an attribute path, but the model is a plain callable without submodules; "
                f"pass the module object as {label}="
            )
        return spec, None
    if isinstance(spec, str):
        try:
            return model.get_submodule(spec), spec
        except AttributeError:
            raise InvalidArgumentError(
                f"{type(model).__name__} has no submodule {label}={spec!r}; its recurrent modules are "
                f"{_recurrent_names(model) or 'none'}; pass one of those paths or the module object"
            ) from None
    path = next((name for name, m in model.named_modules() if m is spec), None)
    if path is None:
        raise InvalidArgumentError(
            f"{label}= is a {type(spec).__name__} that is not a submodule of {type(model).__name__}; pass a module "
            f"of the probed model (its recurrent modules are {_recurrent_names(model) or 'none'})"
        )
    return spec, path


def _recurrent_names(model: nn.Module) -> str:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    return ", ".join(f"{n!r} ({type(m).__name__})" for n, m in found)


def _only_recurrent_module(model: Any, measure: str) -> tuple[nn.Module, str, bool]:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"measure={measure!r} on a plain callable needs the recurrent module: pass module= (an nn.RNN, "
            "nn.LSTM or nn.GRU it calls) or cell= (the module it calls once per timestep)"
        )
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]
    if not found:
        raise ModelInterfaceError(
            f"measure={measure!r} needs a recurrent module, but {type(model).__name__} has no nn.RNN/LSTM/GRU "
            "and no nn.RNNCell/LSTMCell/GRUCell; pass cell= naming the module it calls once per timestep"
        )
    if len(found) > 1:
        raise InvalidArgumentError(
            f"{type(model).__name__} has several recurrent modules, {_recurrent_names(model)}; pass module= "
            "(an nn.RNN/LSTM/GRU) or cell= (a cell) with the path of the one to measure"
        )
    name, module = found[0]
    return module, name, isinstance(module, nn.RNNBase)


def _check_target(module: nn.Module, path: str | None, fused: bool, options: ProbeOptions) -> int:
    """The measured layer, after checking that `options` fit the module."""
    kind = type(module).__name__
    lstm = module.mode == "LSTM" if fused else isinstance(module, nn.LSTMCell)
    if options.measure == "cell" and not lstm:
        raise InvalidArgumentError(
            f"measure='cell' reads an LSTM's cell state, but {_shown(path)} is a {kind}, which has none; "
            "use measure='hidden'"
        )
    if not fused:
        if options.layer not in (None, 0):
            raise InvalidArgumentError(
                f"layer={options.layer} was asked but {_shown(path)} is a cell, which has one layer; leave layer out"
            )
        if options.contributions and not isinstance(module, _BUILTIN_CELLS):
            raise InvalidArgumentError(
                f"contributions=True needs the recurrent weight of an nn.RNN/LSTM/GRU or nn.RNNCell/LSTMCell/GRUCell, "
                f"but {_shown(path)} is a {kind}; leave contributions out"
            )
        return 0
    if module.bidirectional:
        raise ModelInterfaceError(
            f"{_shown(path)} is a bidirectional {kind}: its backward direction runs from the end of the sequence, "
            "so it cannot be split in time to expose its states; use measure='input' for it"
        )
    layers = int(module.num_layers)
    if options.layer is None:
        return layers - 1
    if options.layer >= layers:
        raise InvalidArgumentError(
            f"layer={options.layer} is out of range: {_shown(path)} has {layers} layer(s), 0..{layers - 1}; "
            "leave layer out for the top one"
        )
    return int(options.layer)


# -- measuring -----------------------------------------------------------------------------------------


def record_states(
    target: Target, model: Any, options: ProbeOptions, stack: contextlib.ExitStack
) -> _FusedStates | _CellStates:
    """Intercept the target module's forward in `model` until `stack` closes; read the results after the backward."""
    module = target.locate(model)
    recorder = _FusedStates(module, target.layer, options) if target.fused else _CellStates(module, options)
    saved = module.__dict__.get("forward")
    module.forward = recorder

    def restore() -> None:
        if saved is None:
            del module.forward
        else:
            module.forward = saved

    stack.callback(restore)
    return recorder


@dataclass
class StateGradients:
    """What a state probe measured: per-sample squared norms by lag, and the weight contributions if asked."""

    squares: np.ndarray
    valid: np.ndarray
    contributions: dict[str, np.ndarray] | None


class _FusedStates:
    """Stands in for an nn.RNN/LSTM/GRU's forward for one call: layer by layer, the measured layer split in time."""

    def __init__(self, module: nn.RNNBase, layer: int, options: ProbeOptions) -> None:
        self.module, self.layer, self.options = module, layer, options
        self.op = _FUSED_OPS[module.mode]
        self.lstm = module.mode == "LSTM"
        self.one_call = False  # decided in __call__, where the batch is known
        lengths = np.asarray(options.lengths or (options.seq_len,))
        lags = options.seq_len - 1 - options.steps
        shifted = (lengths[:, None] - 1 - lags[None, :]).ravel()
        self.measured_at = sorted({int(t) for t in shifted if t >= 0})  # every sample's own measured steps
        self.aliased = set(options.steps.tolist()) if options.contributions else set()
        self.calls = 0
        self.cuts: list[int] = []
        self.states: dict[int, tuple[torch.Tensor, ...]] = {}
        self.aliases: dict[str, list[torch.Tensor]] = {}
        self.inputs = self.outputs = self.initial = torch.empty(0)
        self.layer_output = self.recurrent = torch.empty(0)  # the one-call path's measured tensors: output and u

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
        if x.shape[0] != self.options.seq_len:
            raise ModelInterfaceError(
                f"the model runs its {type(module).__name__} over {x.shape[0]} timesteps but seq_len is "
                f"{self.options.seq_len}; the measured states must be the probe's timesteps"
            )
        initial = self._initial_states(x, hx)
        unmeasured = {x.shape[0] - 1, *last, *self.aliased}
        split = sorted({*unmeasured, *self.measured_at})
        self.one_call = _one_call(module, self.options, x.shape[0] * x.shape[1] / len(split))
        finals = []
        for layer in range(module.num_layers):
            measured = layer == self.layer
            cuts = split if measured and not self.one_call else sorted(unmeasured)
            out, states = self._run_layer(layer, x, initial[layer], cuts, measured and self.one_call)
            if measured:
                self.cuts, self.states, self.layer_output = cuts, states, out
                self.inputs, self.outputs = x.detach(), out.detach()
                self.initial = initial[layer][0].detach()
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
        if hx is None:
            sizes = [module.proj_size or module.hidden_size, module.hidden_size] if self.lstm else [module.hidden_size]
            hx = [x.new_zeros(module.num_layers, x.shape[1], size) for size in sizes]
        elif not self.lstm:
            hx = [hx]
        states = [tuple(h[layer] for h in hx) for layer in range(module.num_layers)]
        # A leaf that needs a gradient, so that every state after it is on the autograd graph.
        states[self.layer] = tuple(
            s if s.requires_grad else s.detach().requires_grad_(True) for s in states[self.layer]
        )
        return states

    def _weights(self, layer: int) -> list[str]:
        names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
        if self.module.bias:
            names += [f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
        if self.lstm and self.module.proj_size:
            names.append(f"weight_hr_l{layer}")
        return names

    def _run_layer(
        self, layer: int, x: torch.Tensor, state: tuple[torch.Tensor, ...], cuts: list[int], zero_recurrent: bool
    ) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, ...]]]:
        """One layer over the sequence, one fused call per chunk; the state after each chunk's last step.

        `zero_recurrent`: the input gets the extra zero input u (`self.recurrent`) through W_hh, for the one-call path.
        """
        names = self._weights(layer)
        weights = [getattr(self.module, name) for name in names]
        if zero_recurrent:
            self.recurrent = x.new_zeros(*x.shape[:2], weights[1].shape[1]).requires_grad_(True)
            x = torch.cat([x, self.recurrent], dim=-1)
            weights[0] = torch.cat([weights[0], weights[1]], dim=1)
        recurrent = [i for i, name in enumerate(names) if name.startswith(("weight_hh", "weight_hr"))]
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
                hx = tuple(s[None] for s in state) if self.lstm else state[0][None]
                out, *final = self.op(
                    x[first : last + 1], hx, used, self.module.bias, 1, 0.0, self.module.training, False, False
                )
                state = tuple(f[0] for f in final)
                states[last] = state
                # The state is the output at the chunk's last step too: one tensor, as in an unrolled loop.
                pieces += [out[:-1], state[0][None]]
            start = end + 1
        return torch.cat(pieces), states

    def measured(self) -> list[torch.Tensor]:
        """The tensors to differentiate: the measured layer's states at the cuts, then the weight copies."""
        if self.calls == 0:
            raise ModelInterfaceError(
                f"the model never called its {type(self.module).__name__} in the forward pass, so it has no states "
                "to measure; pass module= naming the one it uses"
            )
        if self.one_call:
            return [self.layer_output, self.recurrent]
        tensors = [self.states[t][0] for t in self.cuts]
        if self.options.measure == "cell":
            tensors += [self.states[t][1] for t in self.cuts]
        return tensors + [a for copies in self.aliases.values() for a in copies]

    @torch.no_grad()
    def result(self, grads: list[torch.Tensor]) -> StateGradients:
        if self.one_call:  # dL/dh_t: at the output at step t, plus dL/du_{t+1} (none after the last step)
            at = self.measured_at
            steps = torch.tensor(at, device=grads[0].device)
            g = grads[0][steps] + nn.functional.pad(grads[1], (0, 0, 0, 0, 0, 1))[steps + 1]
            squares, valid = by_lag(_squares(g), np.asarray(at), self.options)
            return StateGradients(squares, valid, None)
        n = len(self.cuts)
        g = torch.stack(grads[:n])
        if self.options.measure == "cell":
            cuts = torch.tensor(self.cuts, device=g.device)
            h_prev = torch.cat([self.initial[None], self.outputs[:-1]])[cuts]
            c = torch.stack([self.states[t][1] for t in self.cuts])
            g = torch.stack(grads[n : 2 * n]) + _through_hidden(
                g, self.inputs[cuts], h_prev, c, self.module, f"_l{self.layer}"
            )
            n *= 2
        squares, valid = by_lag(_squares(g), np.asarray(self.cuts), self.options)
        return StateGradients(squares, valid, _contributions(self.aliases, grads[n:]))


# Which way a fused layer is measured, where both can. The split path pays a fixed cost per call of the fused kernel
# (on CPU about 0.35 ms forward and backward for an LSTM); the one-call path a fused pass about 1.3 to 1.5 times as
# long (its input projection is wider by W_hh). So splitting is the cheaper where its chunks are long and each step is
# expensive: in float32 on 2 CPU cores (nn.RNN and nn.LSTM, hidden 64 to 256, batch 8, 4 to 512 chunks), where each
# chunk holds at least about this much work, in steps x batch x hidden_size^2.
_SPLIT_MIN_WORK = 2**22


def _one_call(module: nn.RNNBase, options: ProbeOptions, batch_steps_per_chunk: float) -> bool:
    """Whether the measured layer runs in one fused call with a zero recurrent input instead of split in time.

    `batch_steps_per_chunk`: batch size times the split path's mean chunk length.
    """
    if options.measure != "hidden" or module.mode == "GRU" or options.contributions:
        return False
    return batch_steps_per_chunk * module.hidden_size**2 < _SPLIT_MIN_WORK


class _CellStates:
    """Stands in for a cell's forward: records its output (the state after each call) and passes it on."""

    def __init__(self, module: nn.Module, options: ProbeOptions) -> None:
        self.module, self.options = module, options
        self.forward = module.forward
        self.hidden: list[torch.Tensor] = []
        self.cell: list[torch.Tensor] = []
        self.gates: list[tuple[torch.Tensor, torch.Tensor]] = []  # each call's input and previous hidden state
        self.aliases: dict[str, list[torch.Tensor]] = {"weight_hh": []} if options.contributions else {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.options.contributions:
            output = self.forward(*args, **kwargs)
        else:  # this call's own copy of the recurrent weight, so its share of dL/dW can be read
            parameters = self.module._parameters
            saved = parameters["weight_hh"]
            parameters["weight_hh"] = saved.detach().requires_grad_(True)  # type: ignore[assignment]
            self.aliases["weight_hh"].append(parameters["weight_hh"])  # type: ignore[arg-type]
            try:
                output = self.forward(*args, **kwargs)
            finally:
                parameters["weight_hh"] = saved
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
            shown = (
                f"a tensor of shape {tuple(hidden.shape)}"
                if isinstance(hidden, torch.Tensor)
                else type(hidden).__name__
            )
            raise ModelInterfaceError(
                f"the cell returned {shown}; the probe expects the new hidden state of the batch, a tensor "
                "(batch, hidden), or a tuple whose first element is one"
            )
        self.hidden.append(hidden)
        if self.options.measure == "cell":
            # A view, so that the gradient read here is c_t's own path into step t+1; the path through h_t inside
            # the cell is added in `result`, whether the cell computes it in one kernel or in separate ops.
            cell = output[1].view_as(output[1])
            self.cell.append(cell)
            x = args[0] if args else kwargs["input"]
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            self.gates.append((x.detach(), torch.zeros_like(hidden) if hx is None else hx[0].detach()))
            output = (hidden, cell)
        return output

    def measured(self) -> list[torch.Tensor]:
        if len(self.hidden) != self.options.seq_len:
            raise ModelInterfaceError(
                f"the cell {type(self.module).__name__} was called {len(self.hidden)} time(s) in the forward pass; "
                f"the probe expects one call per timestep ({self.options.seq_len}); pass cell= naming the module "
                "the model calls once per step"
            )
        return self.hidden + self.cell + self.aliases.get("weight_hh", [])

    @torch.no_grad()
    def result(self, grads: list[torch.Tensor]) -> StateGradients:
        n = self.options.seq_len
        g = torch.stack(grads[:n])
        if self.options.measure == "cell":
            x, h_prev = (torch.stack(t) for t in zip(*self.gates, strict=True))
            c = torch.stack(self.cell)
            g = torch.stack(grads[n : 2 * n]) + _through_hidden(g, x, h_prev, c, self.module, "")
            n *= 2
        squares, valid = by_lag(_squares(g), np.arange(self.options.seq_len), self.options)
        contributions = _contributions(self.aliases, grads[n:])
        if contributions is not None:
            contributions = {name: norms[self.options.steps] for name, norms in contributions.items()}
        return StateGradients(squares, valid, contributions)


def _through_hidden(
    g_h: torch.Tensor, x: torch.Tensor, h_prev: torch.Tensor, c: torch.Tensor, module: nn.Module, suffix: str
) -> torch.Tensor:
    """The share of dL/dc_t that goes through h_t = o_t * tanh(c_t) (times W_hr with projections), given dL/dh_t.

    The output gate o_t is recomputed from the step's input and previous hidden state with the LSTM's weights
    (`weight_ih{suffix}`, ...; gate order i, f, g, o).
    """

    def weight(name: str) -> torch.Tensor | None:
        return getattr(module, name + suffix, None)

    rows = slice(3 * c.shape[-1], 4 * c.shape[-1])
    pre = x @ weight("weight_ih")[rows].T + h_prev @ weight("weight_hh")[rows].T  # type: ignore[index]
    if weight("bias_ih") is not None:
        pre = pre + weight("bias_ih")[rows] + weight("bias_hh")[rows]  # type: ignore[index]
    if weight("weight_hr") is not None:
        g_h = g_h @ weight("weight_hr")
    return g_h * torch.sigmoid(pre) * (1 - torch.tanh(c) ** 2)


def weight_terms(aliases: dict[str, list[torch.Tensor]], grads: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each weight copy's gradient, by weight name: the term that its step's use of the weight adds to dL/dW."""
    terms, i = {}, 0
    for name, copies in aliases.items():
        terms[name] = grads[i : i + len(copies)]
        i += len(copies)
    return terms


def _contributions(aliases: dict[str, list[torch.Tensor]], grads: list[torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The norm of each step's term in the gradient of each recurrent weight, or None when none were asked for."""
    if not aliases:
        return None
    return {
        name: np.array([float(torch.linalg.vector_norm(t.to(torch.float64))) for t in terms])
        for name, terms in weight_terms(aliases, grads).items()
    }


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
