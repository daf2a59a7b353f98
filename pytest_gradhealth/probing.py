"""`probe`: one BPTT pass that measures how much gradient of a loss on the last output reaches each timestep."""

from __future__ import annotations

import contextlib
import copy
import platform
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from pytest_gradhealth import states
from pytest_gradhealth.errors import (
    DisconnectedGradientError,
    GradHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ModelForwardError,
    ModelInterfaceError,
)
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.recording import emit

MEASURES = ("input", *states.STATE_MEASURES)
MODES = ("eval", "train")
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEED = 0

InputFn = Callable[[int, int, torch.Generator], torch.Tensor]
LossFn = Callable[[Any], torch.Tensor]


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
    batch_first: bool = True
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

    def __post_init__(self) -> None:
        _check_int("seq_len", self.seq_len, minimum=2, fix="the probe needs at least two timesteps to compare")
        if self.input_size is not None:
            _check_int("input_size", self.input_size, minimum=1)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("seed", self.seed, minimum=-(2**63))
        if self.seed > 2**64 - 1:
            raise InvalidArgumentError(f"seed must be < 2**64 (a torch generator's seed), got {self.seed}")
        if self.vocab_size is not None:
            _check_int("vocab_size", self.vocab_size, minimum=1)
        if not isinstance(self.batch_first, bool):
            raise InvalidArgumentTypeError(f"batch_first must be True or False, got {self.batch_first!r}")
        for label, fn in (("input_fn", self.input_fn), ("loss_fn", self.loss_fn)):
            if fn is not None and not callable(fn):
                raise InvalidArgumentTypeError(f"{label} must be callable, got {type(fn).__name__}")
        if self.inputs is not None and self.input_fn is not None:
            raise InvalidArgumentError("pass either inputs= or input_fn=, not both")
        if self.packed:
            if self.lengths is not None:
                raise InvalidArgumentError("a PackedSequence carries its own lengths; pass it or lengths=, not both")
            padded, self.lengths = states.packed_as_padded(self.inputs, self.batch_first)  # type: ignore[arg-type]
            self._check_inputs(padded)
        elif self.inputs is not None:
            self._check_inputs(self.inputs)
        self.dtype = _as_dtype(self.dtype)
        self.device = _as_device(self.device)
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}")
        if self.measure not in MEASURES:
            raise InvalidArgumentError(f"measure must be one of {', '.join(map(repr, MEASURES))}, got {self.measure!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise InvalidArgumentTypeError(f"name must be a string, got {type(self.name).__name__}")
        self._check_state_options()

    def _check_state_options(self) -> None:
        """`layer`, `module`, `cell`, `contributions` (state measures only), `checkpoints` and `lengths`."""
        asked = [label for label in ("layer", "module", "cell") if getattr(self, label) is not None]
        asked += ["contributions"] if self.contributions else []
        if asked and self.measure not in states.STATE_MEASURES:
            raise InvalidArgumentError(
                f"{', '.join(f'{label}=' for label in asked)} only appl{'y' if len(asked) > 1 else 'ies'} to "
                f"measure='hidden' or 'cell', not measure={self.measure!r}; pass measure='hidden' to measure the "
                "recurrent states"
            )
        if self.layer is not None:
            _check_int("layer", self.layer, minimum=0)
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
            _check_int("checkpoints", self.checkpoints, minimum=2, fix="the first and the last step at least")
            if self.checkpoints > self.seq_len:
                raise InvalidArgumentError(
                    f"checkpoints={self.checkpoints} is more than the {self.seq_len} timesteps; pass at most "
                    f"{self.seq_len}, or checkpoints=None for every step"
                )
        if not isinstance(self.contributions, bool):
            raise InvalidArgumentTypeError(f"contributions must be True or False, got {self.contributions!r}")
        if self.lengths is not None:
            given = None if self.inputs is None else self.inputs_batch
            self.lengths = states.normalise_lengths(self.lengths, self.seq_len, self.batch_size or given)
            if self.batch_size is None and given is None:
                self.batch_size = len(self.lengths)
            if self.contributions and len(set(self.lengths)) > 1:
                raise InvalidArgumentError(
                    "contributions=True sums each timestep's term over the batch, which needs samples of one length; "
                    "probe a batch of equal lengths for contributions"
                )

    def _check_inputs(self, inputs: Any) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise InvalidArgumentTypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if inputs.dim() < 2:
            raise InvalidArgumentError(
                f"inputs must have a batch and a time axis, {self.layout_name} (features optional), "
                f"got shape {tuple(inputs.shape)}"
            )
        time_len = inputs.shape[self.time_axis]
        if time_len != self.seq_len:
            raise InvalidArgumentError(
                f"inputs has {time_len} timesteps on axis {self.time_axis} ({self.layout_name}) but seq_len is "
                f"{self.seq_len}; pass seq_len={time_len} or set batch_first to match the layout"
            )
        batch = inputs.shape[1 - self.time_axis]
        if self.batch_size is not None and batch != self.batch_size:
            raise InvalidArgumentError(
                f"inputs has batch size {batch} but batch_size={self.batch_size} was asked; leave batch_size out "
                "to use the inputs' own"
            )

    @property
    def time_axis(self) -> int:
        return 1 if self.batch_first else 0

    @property
    def packed(self) -> bool:
        return isinstance(self.inputs, PackedSequence)

    @property
    def inputs_batch(self) -> int:
        """The batch size of the given inputs."""
        if self.packed:
            return len(self.lengths)  # type: ignore[arg-type]
        return self.inputs.shape[1 - self.time_axis]  # type: ignore[union-attr]

    @property
    def steps(self) -> np.ndarray:
        """The measured timesteps: every one, or `checkpoints` evenly spaced ones with the first and the last."""
        return states.measured_steps(self.seq_len, self.checkpoints)

    @property
    def layout_name(self) -> str:
        return "(batch, seq, ...)" if self.batch_first else "(seq, batch, ...)"


def probe(
    model: nn.Module | Callable[..., Any],
    seq_len: int,
    *,
    input_size: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    inputs: torch.Tensor | PackedSequence | None = None,
    input_fn: InputFn | None = None,
    vocab_size: int | None = None,
    batch_first: bool | None = None,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    mode: str = "eval",
    measure: str = "input",
    name: str | None = None,
    layer: int | None = None,
    module: str | nn.Module | None = None,
    cell: str | nn.Module | None = None,
    checkpoints: int | None = None,
    contributions: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> GradientProfile:
    """Run one BPTT pass and measure the gradient norm that a loss on the last output sends to each timestep.

    Inputs are N(0, 1) of shape (batch, seq_len, input_size) drawn from a private generator seeded by `seed`
    (`inputs=` or `input_fn(batch_size, seq_len, generator)` replace them; `vocab_size=` draws integer tokens and
    measures at the model's `nn.Embedding` output). The default loss is sum over the batch of <v, y_T> with v a
    fixed random unit vector; `loss_fn(output)` replaces it. The model, its gradients and the global random state
    are left exactly as they were. `dtype`/`device` other than the model's probe a copy of it.

    `measure="hidden"`/`"cell"` measure dL/dh_t / dL/dc_t of the recurrent states after each step t instead, in
    `layer` (the top one by default) of the model's nn.RNN/LSTM/GRU (`module=` names it when there are several) or
    at the outputs of a `cell=` called once per step; `contributions=True` adds each step's share of the recurrent
    weights' gradient. `checkpoints=K` measures K evenly spaced steps. `lengths=` (or a PackedSequence input) marks
    a padded batch: the loss is on each sample's last real step and norms are aligned by the lag from it.
    """
    options = ProbeOptions(
        seq_len=seq_len,
        input_size=input_size,
        batch_size=batch_size,
        seed=seed,
        inputs=inputs,
        input_fn=input_fn,
        vocab_size=vocab_size,
        batch_first=default_batch_first(model) if batch_first is None else batch_first,
        loss_fn=loss_fn,
        dtype=dtype,  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        mode=mode,
        measure=measure,
        name=name,
        layer=layer,
        module=module,
        cell=cell,
        checkpoints=checkpoints,
        contributions=contributions,
        lengths=lengths,
    )
    return run_probe(model, options)


def default_batch_first(model: Any) -> bool:
    """The layout of the model's first nn.RNN/LSTM/GRU (batch-first when it has none): PyTorch's own default is
    time-major, and a probe in the other layout would measure a different sequence than the user means."""
    recurrent = (
        next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None) if isinstance(model, nn.Module) else None
    )
    return True if recurrent is None else bool(recurrent.batch_first)


def make_options(model: Any, seq_len: int, options: dict[str, Any]) -> ProbeOptions:
    """`ProbeOptions` for `model` from keyword options, with an error naming the valid ones when a name is unknown;
    batch_first, when not given, is the model's own layout."""
    known = {f.name for f in fields(ProbeOptions)} - {"seq_len"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidArgumentTypeError(
            f"unknown probe option(s) {', '.join(map(repr, unknown))}; valid options are {', '.join(sorted(known))}"
        )
    if options.get("batch_first") is None:
        options = {**options, "batch_first": default_batch_first(model)}
    return ProbeOptions(seq_len=seq_len, **options)


def run_probe(
    model: Any, options: ProbeOptions, check: Callable[[GradientProfile], dict] | None = None
) -> GradientProfile:
    """Measure, then hand the profile and the verdict of `check` (if any) to the recording observers.

    A disconnected model is recorded with the verdict "disconnected" before its error propagates.
    """
    try:
        profile = measure_profile(model, options)
    except DisconnectedGradientError as exc:
        if exc.profile is not None:
            emit(exc.profile, {"verdict": "disconnected", "message": str(exc)})
        raise
    emit(profile, None if check is None else check(profile))
    return profile


def measure_profile(model: nn.Module | Callable[..., Any], options: ProbeOptions) -> GradientProfile:
    """`probe` without the recording: validated options in, profile out."""
    if not callable(model):
        raise InvalidArgumentTypeError(
            f"model must be a torch.nn.Module or a callable taking the input tensor, got {type(model).__name__}"
        )
    model_dtype, model_device = _model_dtype_device(model)
    dtype = options.dtype or model_dtype
    device = options.device or model_device
    first = _first_input_module(model)
    vocab_size = options.vocab_size
    if vocab_size is None and isinstance(first, nn.Embedding):
        vocab_size = first.num_embeddings
    input_size = None
    if vocab_size is None and options.inputs is None and options.input_fn is None:
        input_size = options.input_size or _infer_input_size(model)
    target = states.find_target(model, options) if options.measure in states.STATE_MEASURES else None

    with _probe_context(model, options.mode, device, options.seed) as guarded:
        run_model = _prepared_model(guarded, dtype, device, model_dtype, model_device)
        generator = torch.Generator(device="cpu").manual_seed(options.seed)
        x = _make_inputs(options, generator, vocab_size, input_size, dtype, device)
        batch = x.shape[1 - options.time_axis]
        tokens = not x.is_floating_point()
        embedding = _find_embedding(run_model) if tokens and isinstance(run_model, nn.Module) else None
        if tokens and embedding is None:
            raise ModelInterfaceError(
                f"token inputs ({x.dtype}) need an nn.Embedding in the model, where the probe measures the "
                f"gradient, but {_model_name(model)} has none; give float inputs instead"
            )
        with contextlib.ExitStack() as stack:
            if target is not None:
                recorder = states.record_states(target, run_model, options, stack)
            if tokens:
                captured = _capture_embedding_outputs(embedding, stack)  # type: ignore[arg-type]
            else:
                x.requires_grad_(True)
            output = _forward(run_model, x, options)
            loss = _loss(output, options, generator, batch)
            if target is not None:
                measured = recorder.measured()
            elif tokens:
                measured = _embedding_steps(captured, options, batch)
            else:
                measured = [x]
            grads = _gradients(loss, measured, model)
        if target is None:
            norms, sample_norms = _step_norms(grads, options)
            contributions = None
        else:
            result = recorder.result(grads)
            norms, sample_norms = states.batch_rms(result.squares, result.valid)
            contributions = result.contributions

    profile = GradientProfile(
        norms=norms,
        sample_norms=sample_norms,
        seq_len=options.seq_len,
        steps=options.steps,
        name=options.name or _model_name(model),
        model=_model_name(model),
        batch_size=batch,
        seed=options.seed,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        measure=options.measure,
        mode=options.mode,
        inputs="tokens" if tokens else "float",
        input_size=int(embedding.embedding_dim if embedding is not None else x.shape[-1]),
        hidden_size=_hidden_size(model),
        layer=None if target is None else target.layer,
        versions=_versions(),
        contributions=contributions,
    )
    _check_connected(profile, model)
    return profile


# -- validation helpers ------------------------------------------------------------------------------


def _check_int(label: str, value: Any, minimum: int | None, fix: str = "") -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{label} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{label} must be >= {minimum}, got {value}" + (f" ({fix})" if fix else ""))


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
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


def _as_device(device: torch.device | str | None) -> torch.device | None:
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"device={device!r} was asked but CUDA is not available to this torch "
            f"({torch.__version__}); probe on device='cpu' or run where a GPU is visible"
        )
    return resolved


# -- the model ---------------------------------------------------------------------------------------


def _model_name(model: Any) -> str:
    return type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", type(model).__name__)


def _model_dtype_device(model: Any) -> tuple[torch.dtype, torch.device]:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def _find_embedding(model: nn.Module) -> nn.Embedding | None:
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


_INPUT_MODULES = (nn.RNNBase, nn.RNNCellBase, nn.Linear, nn.Embedding)


def _first_input_module(model: Any) -> nn.Module | None:
    if not isinstance(model, nn.Module):
        return None
    return next((m for m in model.modules() if isinstance(m, _INPUT_MODULES)), None)


def _hidden_size(model: Any) -> int | None:
    """The hidden size of the model's first recurrent module or cell, when it has one."""
    if not isinstance(model, nn.Module):
        return None
    recurrent = next((m for m in model.modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))), None)
    return None if recurrent is None else int(recurrent.hidden_size)


def _infer_input_size(model: Any) -> int:
    first = _first_input_module(model)
    if isinstance(first, (nn.RNNBase, nn.RNNCellBase)):
        return int(first.input_size)
    if isinstance(first, nn.Linear):
        return int(first.in_features)
    raise InvalidArgumentError(
        f"cannot infer input_size for {_model_name(model)}: it has no nn.RNN/LSTM/GRU, cell or nn.Linear to read "
        "it from; pass input_size=, inputs= or input_fn="
    )


@contextlib.contextmanager
def _probe_context(model: Any, mode: str, device: torch.device, seed: int) -> Iterator[Any]:
    """Put the model in the probe's mode and the global RNG on `seed`; restore both, and every buffer, after."""
    if device.type == "cuda":
        torch.cuda.init()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    # Each buffer object and its values: forward may update a buffer in place or assign a new tensor to its name.
    buffers = [(m, name, b, b.detach().clone()) for m in modules for name, b in m._buffers.items() if b is not None]
    cudnn_off = device.type == "cuda" and mode == "eval"  # cuDNN's RNN backward refuses to run in eval mode
    try:
        cudnn = torch.backends.cudnn.flags(enabled=False) if cudnn_off else contextlib.nullcontext()
        with torch.random.fork_rng(devices=cuda_devices), cudnn:
            # Dropout in train mode draws from the global generators. Seed only those fork_rng restores:
            # torch.manual_seed would also queue a seed that a not yet initialised CUDA applies after the probe
            # (and capture a stack trace to do so, a large share of a small probe's cost).
            torch.default_generator.manual_seed(seed)
            for index in cuda_devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            for m in modules:
                m.training = mode == "train"
            yield model
    finally:
        for m, flag in zip(modules, flags, strict=False):
            m.training = flag
        with torch.no_grad():
            for m, name, buffer, saved in buffers:
                m._buffers[name] = buffer
                if buffer.shape == saved.shape and not torch.equal(buffer, saved):
                    buffer.copy_(saved)


def _prepared_model(
    model: Any, dtype: torch.dtype, device: torch.device, model_dtype: torch.dtype, model_device: torch.device
) -> Any:
    """The model itself, or a converted copy when another dtype or device was asked (the model is never moved)."""
    if not isinstance(model, nn.Module) or (dtype == model_dtype and _same_device(device, model_device)):
        return model
    return copy.deepcopy(model).to(dtype=dtype, device=device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True


# -- inputs, forward, loss ---------------------------------------------------------------------------


def _make_inputs(
    options: ProbeOptions,
    generator: torch.Generator,
    vocab_size: int | None,
    input_size: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    batch = options.batch_size or DEFAULT_BATCH_SIZE
    if options.packed:
        x = states.packed_as_padded(options.inputs, options.batch_first)[0]  # type: ignore[arg-type]
    elif options.inputs is not None:
        x = options.inputs.detach().clone()
    elif options.input_fn is not None:
        x = _call_user(options.input_fn, "input_fn", batch, options.seq_len, generator)
        if not isinstance(x, torch.Tensor):
            raise InvalidArgumentTypeError(f"input_fn must return a torch.Tensor, got {type(x).__name__}")
        options._check_inputs(x)
        x = x.detach().clone()
    else:  # drawn batch-first whatever the layout, so a time-major model sees the same sequences
        if vocab_size is not None:
            x = torch.randint(0, vocab_size, (batch, options.seq_len), generator=generator)
        else:
            assert input_size is not None
            x = torch.randn((batch, options.seq_len, input_size), generator=generator, dtype=torch.float64)
        if not options.batch_first:
            x = x.transpose(0, 1).contiguous()
    if options.lengths is not None and options.inputs is None and options.input_fn is None:
        x = states.zero_padding(x, options)
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


_SHAPE_WORDS = re.compile(r"size|shape|dimension|dim\b|mat1|expected .*input|index out of range", re.IGNORECASE)


def _forward(model: Any, x: torch.Tensor, options: ProbeOptions) -> Any:
    try:
        if options.packed:
            return model(pack_padded_sequence(x, options.lengths, options.batch_first, enforce_sorted=False))
        return model(x)
    except GradHealthError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        given = f"{'token' if not x.is_floating_point() else 'float'} input of shape {tuple(x.shape)}, {x.dtype}"
        if _SHAPE_WORDS.search(str(exc)):
            raise ModelInterfaceError(
                f"{_model_name(model)} rejected the probe's {given} ({options.layout_name}): {exc}. "
                "Pass input_size=, batch_first=, vocab_size= or inputs= to match what the model expects"
            ) from exc
        raise ModelForwardError(f"{_model_name(model)} raised inside forward on the probe's {given}: {exc}") from exc
    except Exception as exc:
        raise ModelForwardError(
            f"{_model_name(model)} raised {type(exc).__name__} inside forward on the probe's input of shape "
            f"{tuple(x.shape)}: {exc}"
        ) from exc


def _call_user(fn: Callable[..., Any], label: str, *args: Any) -> Any:
    """Call a function the user gave the probe; its failure is re-raised with the function's role, chained."""
    try:
        return fn(*args)
    except Exception as exc:
        raise ModelForwardError(f"{label} raised {type(exc).__name__}: {exc}") from exc


def _first_tensor(output: Any) -> Any:
    while isinstance(output, (tuple, list)) and not isinstance(output, PackedSequence) and output:
        output = output[0]
    return output


def _loss(output: Any, options: ProbeOptions, generator: torch.Generator, batch: int) -> torch.Tensor:
    if options.loss_fn is not None:
        loss = _call_user(options.loss_fn, "loss_fn", output)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            shown = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(f"loss_fn must return a floating scalar tensor, got {shown}")
        return loss.reshape(())
    y = _first_tensor(output)
    if isinstance(y, PackedSequence):
        y = pad_packed_sequence(y, batch_first=options.batch_first)[0]
    if not isinstance(y, torch.Tensor):
        raise ModelInterfaceError(
            f"the model returned {type(y).__name__}; the probe expects a tensor (batch, seq, features) or "
            "(batch, features), or a tuple whose first element is one; pass loss_fn= for other outputs"
        )
    if not y.is_floating_point():
        raise ModelInterfaceError(
            f"the model's output is a {y.dtype} tensor, which carries no gradient; return the floating output "
            "(logits, hidden states) or pass loss_fn="
        )
    if y.dim() < 2:
        raise ModelInterfaceError(
            f"the model's output has shape {tuple(y.shape)}: no time step to take. Expected {options.layout_name} "
            "or (batch, features); pass loss_fn= to define the loss yourself"
        )
    if y.dim() >= 3:
        y = states.last_steps(y, options)
    y = y.reshape(y.shape[0], -1)
    if y.shape[0] != batch:
        raise ModelInterfaceError(
            f"the model's output has {y.shape[0]} rows at its last step but the batch has {batch}: the output's "
            f"layout does not match the input's {options.layout_name}; check batch_first"
        )
    v = torch.randn(y.shape[1], generator=generator, dtype=torch.float64)
    v = (v / v.norm()).to(dtype=y.dtype, device=y.device)
    return (y * v).sum()


# -- gradients ---------------------------------------------------------------------------------------


def _capture_embedding_outputs(embedding: nn.Embedding, stack: contextlib.ExitStack) -> list[torch.Tensor]:
    """Make every output of `embedding` a leaf that requires grad, so the gradient can be read there."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    stack.callback(embedding.register_forward_hook(hook).remove)
    return captured


def _embedding_steps(captured: list[torch.Tensor], options: ProbeOptions, batch: int) -> list[torch.Tensor]:
    """The embedding outputs in time order: one call on the whole sequence, or one call per timestep."""
    if len(captured) == 1 and captured[0].dim() >= 3 and captured[0].shape[options.time_axis] == options.seq_len:
        return captured
    if len(captured) == options.seq_len and all(c.shape[0] == batch for c in captured):
        return captured
    shapes = [tuple(c.shape) for c in captured]
    raise ModelInterfaceError(
        f"the model's nn.Embedding was called {len(captured)} time(s) with output shapes {shapes[:4]}; the probe "
        f"expects one call on the whole sequence {options.layout_name} or one call per timestep ({options.seq_len})"
    )


def _gradients(loss: torch.Tensor, measured: list[torch.Tensor], model: Any) -> list[torch.Tensor]:
    if not loss.requires_grad:
        raise DisconnectedGradientError(
            f"the loss does not depend on the inputs at all: {_model_name(model)}'s output carries no gradient "
            "(computed under torch.no_grad, detached, or not from the input). This is a disconnected graph, "
            "not vanishing"
        )
    grads = torch.autograd.grad(loss, measured, allow_unused=True)
    return [torch.zeros_like(m) if g is None else g for m, g in zip(measured, grads, strict=False)]


def _step_norms(grads: list[torch.Tensor], options: ProbeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample and batch-RMS gradient norms per timestep, computed in float64."""
    if len(grads) == 1:
        g = grads[0].detach()
        if not options.batch_first:
            g = g.transpose(0, 1)
        # One kernel that reads in float64, not a float64 copy and two more ops: each op is a share of a small probe.
        squares = torch.linalg.vector_norm(g.reshape(g.shape[0], g.shape[1], -1), dim=-1, dtype=torch.float64) ** 2
    else:
        squares = torch.stack([g.detach().to(torch.float64).reshape(g.shape[0], -1).pow(2).sum(-1) for g in grads], 1)
    return states.batch_rms(*states.by_lag(squares.cpu().numpy(), np.arange(options.seq_len), options))


def _check_connected(profile: GradientProfile, model: Any) -> None:
    norms = profile.norms
    if np.all(norms == 0.0):
        error = DisconnectedGradientError(
            f"the gradient of the loss is exactly zero at every one of the {profile.seq_len} timesteps: "
            f"{_model_name(model)}'s output at the last step does not depend on its input (a detached path, "
            "dead ReLUs, a zeroed mask). This is a disconnected graph, not vanishing"
        )
        error.profile = profile
        raise error
    if norms[-1] == 0.0:
        raise ModelInterfaceError(
            f"the gradient at the last timestep is exactly zero while earlier steps have some: ratios relative to "
            f"it would be meaningless. {_model_name(model)}'s last output does not depend on its last input (a delay "
            "or a masked final step); pass loss_fn= to put the loss where the last input matters"
        )


def _versions() -> dict[str, str]:
    from pytest_gradhealth import __version__

    return {
        "pytest_gradhealth": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
