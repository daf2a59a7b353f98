"""The probe's options: validated and normalised once, before anything runs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.engine.factories import build, is_factory
from pytest_gradhealth.engine.sequences import (
    BATCH_FEATURE_TIME,
    BATCH_TIME_FEATURE,
    LAYOUTS,
    TIME_BATCH_FEATURE,
    Window,
    measured_steps,
    normalise_lengths,
    packed_as_padded,
)
from pytest_gradhealth.errors import InvalidArgumentError, InvalidArgumentTypeError

STATE_MEASURES = ("hidden", "cell")
MEASURES = ("input", *STATE_MEASURES)
MODES = ("eval", "train")
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEED = 0

InputFn = Callable[[int, int, torch.Generator], torch.Tensor]
LossFn = Callable[[Any], torch.Tensor]
ForwardFn = Callable[[Any, torch.Tensor], Any]


@dataclass
class ProbeOptions:
    """The probe's options, validated and normalised (see `probe` for their meaning)."""

    seq_len: int
    input_size: int | None = None
    batch_size: int | None = None
    seed: int = DEFAULT_SEED
    inputs: torch.Tensor | PackedSequence | None = None
    input_fn: InputFn | None = None
    vocab_size: int | None = None
    batch_first: bool | None = None  # None: as `layout` says, batch-first when neither is given
    loss_fn: LossFn | None = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    mode: str = "eval"
    measure: str = "input"
    name: str | None = None
    layer: int | None = None
    module: str | nn.Module | None = None
    cell: str | nn.Module | None = None
    checkpoints: int | None = None
    contributions: bool = False
    lengths: Sequence[int] | torch.Tensor | None = None
    layout: str | None = None
    forward: ForwardFn | None = None
    warmup: int = 0
    seeds: int | None = None  # None: one draw; N: N draws from seeds seed .. seed+N-1

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, minimum=2, fix="the probe needs at least two timesteps to compare")
        check_int("warmup", self.warmup, minimum=0, fix="the number of steps run before the measured window")
        if self.warmup and (self.lengths is not None or isinstance(self.inputs, PackedSequence)):
            raise InvalidArgumentError(
                f"warmup={self.warmup} runs every sample for warmup + seq_len steps, which a padded batch (lengths= "
                "or a PackedSequence) does not; pass warmup=0, or inputs of one length"
            )
        if self.input_size is not None:
            check_int("input_size", self.input_size, minimum=1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
        check_int("seed", self.seed, minimum=-(2**63))
        if self.seed > 2**64 - 1:
            raise InvalidArgumentError(f"seed must be < 2**64 (a torch generator's seed), got {self.seed}")
        if self.seeds is not None:
            check_int("seeds", self.seeds, minimum=1, fix="the number of independent draws")
            if self.seed + self.seeds - 1 > 2**64 - 1:
                raise InvalidArgumentError(
                    f"seed + seeds - 1 must be < 2**64 (a torch generator's seed), got {self.seed + self.seeds - 1}"
                )
        if self.vocab_size is not None:
            check_int("vocab_size", self.vocab_size, minimum=1)
        self._resolve_layout()
        for label, fn in (("input_fn", self.input_fn), ("loss_fn", self.loss_fn), ("forward", self.forward)):
            if fn is not None and not callable(fn):
                raise InvalidArgumentTypeError(f"{label} must be callable, got {type(fn).__name__}")
        if self.inputs is not None and self.input_fn is not None:
            raise InvalidArgumentError("pass either inputs= or input_fn=, not both")
        if self.packed:
            if self.layout == BATCH_FEATURE_TIME:
                raise InvalidArgumentError("a PackedSequence has no channels-first layout; pass its model's layout")
            if self.lengths is not None:
                raise InvalidArgumentError("a PackedSequence carries its own lengths; pass it or lengths=, not both")
            padded, self.lengths = packed_as_padded(self.inputs, self.batch_first)  # type: ignore[arg-type]
            self.check_inputs(padded)
        elif self.inputs is not None:
            self.check_inputs(self.inputs)
        self.dtype = as_dtype(self.dtype)
        self.device = as_device(self.device)
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}")
        if self.measure not in MEASURES:
            raise InvalidArgumentError(f"measure must be one of {', '.join(map(repr, MEASURES))}, got {self.measure!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise InvalidArgumentTypeError(f"name must be a string, got {type(self.name).__name__}")
        self._check_state_options()
        for cached in ("steps", "window"):  # read above while the fields were being normalised
            self.__dict__.pop(cached, None)

    def _resolve_layout(self) -> None:
        """`layout` and `batch_first` made to agree: either one given, or both saying the same."""
        if self.batch_first is not None and not isinstance(self.batch_first, bool):
            raise InvalidArgumentTypeError(f"batch_first must be True or False, got {self.batch_first!r}")
        if self.layout is None:
            self.layout = TIME_BATCH_FEATURE if self.batch_first is False else BATCH_TIME_FEATURE
        elif self.layout not in LAYOUTS:
            raise InvalidArgumentError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {self.layout!r}")
        elif self.batch_first is not None and self.batch_first != (self.layout != TIME_BATCH_FEATURE):
            raise InvalidArgumentError(
                f"batch_first={self.batch_first} contradicts layout={self.layout!r}; pass only one of them"
            )
        self.batch_first = self.layout != TIME_BATCH_FEATURE

    def _check_state_options(self) -> None:
        """`layer`, `module`, `cell`, `contributions` (state measures only), `checkpoints` and `lengths`."""
        asked = [label for label in ("layer", "module", "cell") if getattr(self, label) is not None]
        asked += ["contributions"] if self.contributions else []
        if asked and self.measure not in STATE_MEASURES:
            raise InvalidArgumentError(
                f"{', '.join(f'{label}=' for label in asked)} only appl{'y' if len(asked) > 1 else 'ies'} to "
                f"measure='hidden' or 'cell', not measure={self.measure!r}; pass measure='hidden' to measure the "
                "recurrent states"
            )
        if self.layer is not None:
            check_int("layer", self.layer, minimum=0)
        for label in ("module", "cell"):
            value = getattr(self, label)
            if value is not None and not isinstance(value, (str, nn.Module)):
                raise InvalidArgumentTypeError(
                    f"{label} must be an attribute path such as 'encoder.rnn' or the nn.Module itself, "
                    f"got {type(value).__name__}"
                )
        if self.module is not None and self.cell is not None:
            raise InvalidArgumentError("pass module= (an nn.RNN/LSTM/GRU) or cell= (a cell), not both")
        if self.checkpoints is not None:
            check_int("checkpoints", self.checkpoints, minimum=2, fix="the first and the last step at least")
            if self.checkpoints > self.seq_len:
                raise InvalidArgumentError(
                    f"checkpoints={self.checkpoints} is more than the {self.seq_len} timesteps; pass at most "
                    f"{self.seq_len}, or checkpoints=None for every step"
                )
        if not isinstance(self.contributions, bool):
            raise InvalidArgumentTypeError(f"contributions must be True or False, got {self.contributions!r}")
        if self.lengths is not None:
            given = None if self.inputs is None else self.inputs_batch
            self.lengths = normalise_lengths(self.lengths, self.seq_len, self.batch_size or given)
            if self.batch_size is None and given is None:
                self.batch_size = len(self.lengths)
            if self.contributions and len(set(self.lengths)) > 1:
                raise InvalidArgumentError(
                    "contributions=True sums each timestep's term over the batch, which needs samples of one length; "
                    "probe a batch of equal lengths for contributions"
                )

    def check_inputs(self, inputs: Any) -> None:
        """Check that given inputs fit seq_len, the layout and the batch size."""
        if not isinstance(inputs, torch.Tensor):
            raise InvalidArgumentTypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if inputs.dim() < 2:
            raise InvalidArgumentError(
                f"inputs must have a batch and a time axis, {self.layout_name} (features optional), "
                f"got shape {tuple(inputs.shape)}"
            )
        if inputs.shape[self.window.batch_axis] == 0:
            raise InvalidArgumentError(
                f"inputs has an empty batch (shape {tuple(inputs.shape)}); give one sample or more"
            )
        axis = self.window.seq_axis(inputs)
        time_len = inputs.shape[axis]
        if time_len != self.run_len:
            needed = f"seq_len is {self.seq_len}"
            if self.warmup:
                needed = f"warmup + seq_len is {self.warmup} + {self.seq_len}"
            raise InvalidArgumentError(
                f"inputs has {time_len} timesteps on axis {axis} ({self.layout_name}) but {needed}; pass "
                f"seq_len={time_len - self.warmup} or layout= (batch_first=) to match the layout"
            )
        batch = inputs.shape[self.window.batch_axis]
        if self.batch_size is not None and batch != self.batch_size:
            raise InvalidArgumentError(
                f"inputs has batch size {batch} but batch_size={self.batch_size} was asked; leave batch_size out "
                "to use the inputs' own"
            )

    @property
    def packed(self) -> bool:
        return isinstance(self.inputs, PackedSequence)

    @property
    def inputs_batch(self) -> int:
        """The batch size of the given inputs."""
        if self.packed:
            return len(self.lengths)  # type: ignore[arg-type]
        return self.inputs.shape[self.window.batch_axis]  # type: ignore[union-attr]

    @functools.cached_property
    def steps(self) -> np.ndarray:
        """The measured timesteps: every one, or `checkpoints` evenly spaced ones with the first and the last."""
        return measured_steps(self.seq_len, self.checkpoints)

    @property
    def run_len(self) -> int:
        """The timesteps the model runs: the warm-up, then the measured window."""
        return self.warmup + self.seq_len

    @property
    def layout_name(self) -> str:
        return self.window.layout_name

    @functools.cached_property
    def window(self) -> Window:
        """The timesteps, layout and lengths the taps measure: the last seq_len of the run_len steps the model runs."""
        lengths = None if self.lengths is None else tuple(self.lengths)  # type: ignore[arg-type]
        steps = self.steps + self.warmup if self.warmup else self.steps
        return Window(self.run_len, steps, lengths, self.layout)  # type: ignore[arg-type]


_KNOWN = frozenset(f.name for f in fields(ProbeOptions)) - {"seq_len"}  # the keyword options


def make_options(model: Any, seq_len: int, options: dict[str, Any]) -> ProbeOptions:
    """`ProbeOptions` for `model` from keyword options, with an error naming the valid ones when a name is unknown;
    the layout, when neither layout nor batch_first is given, is the model's own (a factory's: that of the model it
    builds under `seed`)."""
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise InvalidArgumentTypeError(
            f"unknown probe option(s) {', '.join(map(repr, unknown))}; valid options are {', '.join(sorted(_KNOWN))}"
        )
    if options.get("batch_first") is not None or options.get("layout") is not None:
        return ProbeOptions(seq_len=seq_len, **options)
    if not is_factory(model):
        return ProbeOptions(seq_len=seq_len, **{**options, "layout": kinds.layout_of(model)})
    seed = ProbeOptions(seq_len=seq_len, **options).seed  # checked, with the rest, before the factory builds under it
    return ProbeOptions(seq_len=seq_len, **{**options, "layout": kinds.layout_of(build(model, seed))})


def check_int(label: str, value: Any, minimum: int | None, fix: str = "") -> None:
    """An int (not a bool) of at least `minimum`, or an error naming `label`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{label} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{label} must be >= {minimum}, got {value}" + (f" ({fix})" if fix else ""))


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`dtype=` as a floating torch.dtype (a name such as 'float64' is accepted)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise InvalidArgumentError(f"dtype must name a torch floating dtype such as 'float64', got {dtype!r}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(f"dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
    return dtype


def as_device(device: torch.device | str | None) -> torch.device | None:
    """`device=` as a torch.device that this torch can use."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "meta":
        raise InvalidArgumentError(
            "device='meta' holds shapes but no values, so there is no gradient to measure; probe on 'cpu' or 'cuda'"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(
            f"device={device!r} was asked but MPS is not available to this torch ({torch.__version__}); probe on "
            "device='cpu'"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device={device!r} was asked but CUDA is not available to this torch "
            f"({torch.__version__}); probe on device='cpu' or run where a GPU is visible"
        )
    return resolved
