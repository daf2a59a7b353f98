"""Log-domain profiles: a backward pass rescaled between chunks of the sequence, so that no step underflows.

A tanh RNN's gradient reaching 1000 steps back is about 1e-320 of the last step's: below float32's range from about
120 steps, below float64's from about 1000. Where the plain pass leaves the dtype's range, the probe runs again with
every nn.RNN/LSTM/GRU of the model split into chunks of time. The states one chunk hands to the next pass through
an identity whose backward multiplies each sample's gradient by a power of two that brings it back to [0.5, 1)
(exact in floating point), and records the exponent. Every path from a step before a chunk boundary to the loss
crosses the boundary through those states (every layer's, of every such module, with the same factor), so the
gradient at the step is the true one times the product of the factors of the boundaries after it: its log10 is
exact however small it is. Per sample in eval mode (samples do not mix); one factor for the batch in train mode,
where batch statistics can mix them.

A state measure's module is run by its tap (chunk by chunk, `FusedStatesTap._every_step`), which hands its states on
through the same rescaling. Not for a model whose steps meet other than through those states: bidirectional layers,
cells called in a loop, convolutions or attention over time, modules of the user's own; nor for weight
contributions, which sum over steps. Such a model keeps its plain profile (with its
underflow flagged); the renormalised one must also agree with the plain one wherever the latter is in range.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from pytest_gradhealth.engine import aten, kinds
from pytest_gradhealth.engine.options import ProbeOptions
from pytest_gradhealth.engine.taps import segments
from pytest_gradhealth.engine.taps.base import stand_in_forward
from pytest_gradhealth.engine.taps.fused import FusedStatesTap, layer_weights
from pytest_gradhealth.errors import GradHealthError

# Modules whose steps meet other than through a recurrent state: a renormalised pass would scale some paths and not
# others across a boundary.
_MIXES_TIME = (nn.Conv1d, nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
# A boundary rescales a sample's gradient only where its largest entry lies outside [2**-LAZY, 2**LAZY]: a gradient in
# range crosses untouched, so a model whose gradient stays in range (or that some path keeps in range) is measured
# exactly as by a plain pass, and one that leaves it is rescaled to [0.5, 1). Less in a dtype of narrow range (`lazy`).
LAZY = 20
# The steepest decay (or growth) per step, in decades, that a chunk of `first_chunk` steps holds in range.
_STEEPEST = 0.5
TRIES = 4  # chunk lengths tried, halving, while a renormalised pass still leaves the range


class NotRenormalisable(GradHealthError):
    """The model runs a recurrent module in a way the renormalised pass cannot split (a packed or shorter sequence, an
    initial state computed from other steps). Internal: the probe falls back to its plain pass."""


def computed_state(module: nn.Module, hx: Any) -> None:
    """Refuse an initial state computed on the graph (an encoder's final state handed to a decoder): the gradient
    would jump from the decoder's first steps to the encoder's last, across the chunks' order in time."""
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    if any(isinstance(h, torch.Tensor) and h.grad_fn is not None for h in states):
        raise NotRenormalisable(f"{type(module).__name__} starts from a state computed from other steps")


def possible(model: Any, options: ProbeOptions) -> bool:
    """Whether the model's steps meet only through the states of unidirectional nn.RNN/LSTM/GRU modules (whose own
    states a state measure may read, without weight contributions, which sum over the steps)."""
    if not isinstance(model, nn.Module) or options.lengths is not None or options.contributions:
        return False
    if options.forward is not None or options.packed:
        return False
    sequence = kinds.contained(model, "sequence")
    others = kinds.contained(model, "cell", "declared")
    return (
        bool(sequence)
        and not others
        and all(not m.bidirectional for _, m, _ in sequence)
        and not any(isinstance(m, _MIXES_TIME) for m in kinds.modules_of(model))
    )


def chunks_first(model: nn.Module) -> int:
    """From how many chunks on a probe runs in chunks from the start: 4, or 2 for a model with a vanilla nn.RNN, whose
    gradient at PyTorch's default initialisation loses about 0.3 decades per step and so leaves float32's range
    within two chunks, where a plain pass would have to be run twice."""
    vanilla = any(m.mode in ("RNN_TANH", "RNN_RELU") for _, m, _ in kinds.contained(model, "sequence"))
    return 2 if vanilla else 4


def lazy(dtype: torch.dtype) -> int:
    """The bound of lazy rescaling in `dtype`: LAZY, or a quarter of the dtype's binary orders below 1 where that is
    less (float16: 3 of its 14), so that a gradient is rescaled long before it turns subnormal."""
    return min(LAZY, int(-math.log2(torch.finfo(dtype).tiny)) // 4)


def needed(norms: np.ndarray, zeros: str | None, subnormal: np.ndarray | None) -> bool:
    """Whether a pass may have left the dtype's range: steps underflowed to zero, or whose subnormal entries cost some
    sample's norm precision (`subnormal`: a flag per step, see `subnormal_steps`), or not finite (an overflow to inf,
    and the NaN of inf times a zero derivative; a NaN of the model's own stays NaN when renormalised)."""
    losing = subnormal is not None and bool(subnormal.any())
    return zeros == "underflow" or losing or not np.isfinite(norms).all()


def first_chunk(dtype: torch.dtype) -> int:
    """Steps per chunk for a first renormalised pass: what a decay of `_STEEPEST` decades per step (a tanh RNN at
    PyTorch's default initialisation loses about 0.32) covers between 2**-LAZY and the dtype's smallest normal number:
    63 steps in float32, 603 in float64."""
    room = -math.log10(torch.finfo(dtype).tiny) - lazy(dtype) * math.log10(2.0)
    return max(4, int(room / _STEEPEST))


def chunk_length(log10_norms: np.ndarray, steps: np.ndarray, dtype: torch.dtype, run_len: int, tried: int) -> int:
    """Steps per chunk after a pass that left the range: what the steepest change per step seen in it (where it was in
    range) covers in half the dtype's range, and at most half of the chunk `tried`."""
    decades = 0.5 * -math.log10(torch.finfo(dtype).tiny)
    ok = np.isfinite(log10_norms)
    changes = np.abs(np.diff(log10_norms[ok])) / np.maximum(np.diff(steps[ok]), 1)
    steepest = float(changes.max()) if changes.size else 0.0
    fits = int(decades // steepest) if steepest > 0.0 else run_len
    return max(1, min(run_len, fits, tried // 2))


def agrees(plain: np.ndarray, renormalised: np.ndarray, plain_norms: np.ndarray, dtype: torch.dtype) -> bool:
    """Whether the renormalised log10 norms equal the plain ones wherever the plain pass stayed well in range: to the
    rounding that scaling by powers of two moves, four of the dtype's eps (bfloat16: 0.0135 decades), at least 1e-3
    decades (float64: 1e-9). A path around the chunks differs by orders of magnitude."""
    in_range = np.isfinite(plain) & (plain_norms > torch.finfo(dtype).tiny * 1e6)
    tolerance = 1e-9 if dtype == torch.float64 else max(1e-3, 4 * math.log10(1 + torch.finfo(dtype).eps))
    return bool(np.all(np.abs(plain[in_range] - renormalised[in_range]) <= tolerance))


class _Rescale(torch.autograd.Function):
    """The identity on the states at a boundary; backward multiplies each sample's gradient by its power of two."""

    @staticmethod
    def forward(ctx: Any, renormaliser: Renormaliser, boundary: int, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.renormaliser, ctx.boundary = renormaliser, boundary
        return tuple(s.view_as(s) for s in states)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[Any, ...]:
        exponent = ctx.renormaliser.exponent(ctx.boundary, grads)
        if exponent is None:  # every sample's gradient in range: it crosses untouched
            return (None, None, *grads)
        return (None, None, *(None if g is None else _times_power_of_two(g, exponent) for g in grads))


def _lazy_exponent(largest: float, bound: int) -> int:
    """The power of two that brings a sample's largest gradient entry to [0.5, 1), where it lies outside
    [2**-bound, 2**bound) (and is finite and nonzero), else 0."""
    if not math.isfinite(largest) or largest <= 0.0:
        return 0
    _, power = math.frexp(largest)  # largest = m * 2**power, m in [0.5, 1)
    return -power if power <= -bound or power > bound else 0


def _times_power_of_two(g: torch.Tensor, exponent: np.ndarray) -> torch.Tensor:
    """g * 2**exponent per sample (rows of g), in two halves so that neither factor leaves g's dtype's range."""
    exponents = exponent.tolist()
    halves = [[2.0 ** (e // 2) for e in exponents], [2.0 ** (e - e // 2) for e in exponents]]
    factors = torch.tensor(halves, dtype=g.dtype, device=g.device).view(2, -1, *(1,) * (g.dim() - 1))
    return g * factors[0] * factors[1]


class Renormaliser:
    """Stands in for every nn.RNN/LSTM/GRU's forward for one probe: layers run chunk by chunk, states rescaled."""

    def __init__(self, chunk: int, options: ProbeOptions) -> None:
        # per sample in eval mode; one factor for the batch in train mode, where batch statistics can mix samples
        self.run_len, self.per_sample = options.run_len, options.mode == "eval"
        self.ends = list(range(chunk - 1, self.run_len - 1, chunk))  # each chunk's last step; the last chunk has none
        self._boundaries = {end: boundary for boundary, end in enumerate(self.ends)}
        self.inputs: list[Any] = []  # what each module the renormaliser ran was called with
        self.tap: Any = None
        self.trusted = False  # set after the forward pass (`check_ran`): no plain pass is needed to check it
        # boundary -> the power of two applied to each sample; None: crossed, every sample in range, none applied
        self.exponents: dict[int, np.ndarray | None] = {}

    def attach(self, model: nn.Module, stack: contextlib.ExitStack, tap: Any) -> None:
        """Stand in for every nn.RNN/LSTM/GRU of `model` but the one a state tap measures (the tap runs it, and hands
        its states on through `carry`)."""
        self.tap = tap
        measured = None
        if isinstance(tap, FusedStatesTap):
            tap.renormaliser, measured = self, tap.module
        for _, module, _ in kinds.contained(model, "sequence"):
            if module is not measured:
                stand_in_forward(module, self._runner(module), stack)

    @property
    def engaged(self) -> bool:
        """Whether some boundary rescaled some sample's gradient."""
        return any(e is not None for e in self.exponents.values())

    def check_ran(self, x: torch.Tensor) -> None:
        """After the forward pass on `x`: refuse a pass that went around the chunks (a model may call a module's
        class forward directly), and say whether the steps provably line up with them without a plain pass to compare
        with: one recurrent module ran, on the probe's input or the tensor the tap measures (or, for a state
        measure, only the measured module ran)."""
        if isinstance(self.tap, FusedStatesTap):
            if self.tap.calls == 0:
                raise NotRenormalisable("the measured module did not run")
            self.trusted = not self.inputs
            return
        if not self.inputs:
            raise NotRenormalisable("no recurrent module ran through the renormalised pass")
        self.trusted = len(self.inputs) == 1 and any(self.inputs[0] is t for t in (x, *self.tap.measured()))

    computed_state = staticmethod(computed_state)  # for the state tap, which cannot import this module

    def carry(self, end: int, states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The states after step `end` as the next step receives them: rescaled where `end` ends a chunk."""
        boundary = self._boundaries.get(end)
        return states if boundary is None else _Rescale.apply(self, boundary, *states)

    def exponent(self, boundary: int, grads: tuple[torch.Tensor | None, ...]) -> np.ndarray | None:
        """The power of two for `boundary` per sample (None: none), chosen by the first gradient to cross it and used by
        every later one."""
        if boundary not in self.exponents:
            # Few ops, then plain Python on one number per sample: each small op after a fused kernel costs tens of
            # microseconds on a CPU (its code and data are out of cache), numpy's as much as torch's.
            largest = functools.reduce(torch.maximum, (g.detach().abs().amax(dim=-1) for g in grads if g is not None))
            bound = lazy(largest.dtype)
            values = largest.tolist()
            if not self.per_sample:
                values = [math.nan if any(math.isnan(v) for v in values) else max(values)] * len(values)
            exponents = [_lazy_exponent(v, bound) for v in values]
            self.exponents[boundary] = np.array(exponents, dtype=np.int64) if any(exponents) else None
        return self.exponents[boundary]

    def log10_factors(self, batch: int) -> np.ndarray:
        """(batch, run_len): log10 of the factor each step's gradient was multiplied by (subtract it)."""
        log2 = np.zeros((batch, self.run_len))
        for boundary, end in enumerate(self.ends):
            exponent = self.exponents.get(boundary)
            if exponent is not None:  # no gradient crossed it, or none was rescaled: nothing before it was scaled
                log2[:, : end + 1] += exponent[:, None]
        return log2 * math.log10(2.0)

    def _runner(self, module: nn.RNNBase) -> Any:
        def forward(input: torch.Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
            return self._run(module, input, hx)

        return forward

    def _run(self, module: nn.RNNBase, input: Any, hx: Any) -> tuple[Any, Any]:
        if isinstance(input, PackedSequence) or input.dim() != 3 or (module.training and module.dropout):
            raise NotRenormalisable(type(module).__name__)
        x = input.transpose(0, 1) if module.batch_first else input
        if x.shape[0] != self.run_len:
            raise NotRenormalisable(f"{type(module).__name__} runs {x.shape[0]} steps")
        computed_state(module, hx)
        self.inputs.append(input)
        lstm = module.mode == "LSTM"
        hx = aten.initial_states(module, x, hx)
        k = len(hx)  # states per layer: h (and c)
        weights = [[getattr(module, n) for n in layer_weights(module, layer)] for layer in range(module.num_layers)]

        def chunk(y: torch.Tensor, flat: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            """Every layer over one chunk from the states `flat` (layer by layer); its output and final states."""
            final: list[torch.Tensor] = []
            for layer in range(module.num_layers):
                mine = flat[layer * k : (layer + 1) * k]
                y, *ends = aten.run_layer(
                    module, y, tuple(s[None] for s in mine) if lstm else mine[0][None], weights[layer]
                )
                final += [e.squeeze(0) for e in ends]  # a view: its backward copies nothing
            return (y, *final)

        # A long probe holds one chunk's graph at a time, rebuilt in backward (`segments.py`).
        segmented = self.run_len >= segments.SEGMENT_FROM_STEPS
        flat = tuple(h[layer] for layer in range(module.num_layers) for h in hx)
        outputs, start = [], 0
        for end in [*self.ends, self.run_len - 1]:
            piece = x[start : end + 1]
            y, *final = segments.Segment.apply(chunk, piece, *flat) if segmented else chunk(piece, flat)
            outputs.append(y)
            flat = self.carry(end, tuple(final))  # every layer's states go on to the next chunk through one rescaling
            start = end + 1
        output = torch.cat(outputs)
        hidden = tuple(torch.stack(flat[j::k]) for j in range(k))
        return (output.transpose(0, 1) if module.batch_first else output), (hidden if lstm else hidden[0])
