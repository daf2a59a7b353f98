"""The forward pass on the probe's inputs, and the loss on its output."""

from __future__ import annotations

import contextlib
import inspect
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.engine.inputs import call_user
from pytest_gradhealth.engine.options import ProbeOptions
from pytest_gradhealth.engine.sequences import BATCH_FEATURE_TIME, TIME_BATCH_FEATURE, last_steps
from pytest_gradhealth.errors import (
    GradHealthError,
    InvalidArgumentError,
    ModelForwardError,
    ModelInterfaceError,
)

_TOKEN_WORDS = re.compile(r"indices.*(Long|Int)|expected .*(Long|Int).*(Float|Double|Half)", re.IGNORECASE)
_SHAPE_WORDS = re.compile(r"size|shape|dimension|dim\b|mat1|expected .*input|index out of range", re.IGNORECASE)


def model_name(model: Any) -> str:
    """The model's class name, or a plain callable's own name."""
    return type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", type(model).__name__)


class TokenInputsExpected(ModelInterfaceError):
    """The model looked up float inputs in an embedding: it reads token indices."""


def run_forward(model: Any, x: torch.Tensor, options: ProbeOptions) -> Any:
    """The model's output on `x`; a failure is re-raised as a GradHealthError saying what the probe gave it.

    `forward(model, x)` calls the model when given; otherwise a forward that needs more positional arguments than the
    input gets `model.init_hidden(batch)` for the first (PyTorch's examples' convention) and None for the rest.
    """
    extra: list[Any] = []
    try:
        if options.forward is not None:
            return options.forward(model, x)
        if options.packed:
            return model(pack_padded_sequence(x, options.lengths, options.batch_first, enforce_sorted=False))
        extra = _state_arguments(model, x.shape[options.window.batch_axis])
        return model(x, *extra)
    except GradHealthError:
        raise
    except torch.OutOfMemoryError as exc:
        raise ModelForwardError(
            f"{model_name(model)} ran out of memory on the probe's input of shape {tuple(x.shape)} "
            f"({x.numel() * x.element_size() / 2**20:.1f} MiB of input, plus the activations autograd keeps for every "
            "step); pass a smaller batch_size= or seq_len, or checkpoints= with measure='hidden'"
        ) from exc
    except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError) as exc:
        given = f"{'token' if not x.is_floating_point() else 'float'} input of shape {tuple(x.shape)}, {x.dtype}"
        if x.is_floating_point() and _TOKEN_WORDS.search(str(exc)):
            raise TokenInputsExpected(
                f"{model_name(model)} looks its input up in an embedding, which needs token indices, but the probe "
                f"gave it a {given}: pass vocab_size= (the embedding's number of tokens) to probe it with tokens"
            ) from exc
        if _SHAPE_WORDS.search(str(exc)):
            raise ModelInterfaceError(
                f"{model_name(model)} rejected the probe's {given} ({options.layout_name}): {exc}. "
                "Pass input_size=, layout= (batch_first=), vocab_size=, forward= or inputs= to match what the model "
                "expects"
            ) from exc
        hint = (
            f"; its forward takes {len(extra)} argument(s) after the input, which the probe filled with "
            f"{'init_hidden(batch)' if extra[0] is not None else 'None'}{' and None' if len(extra) > 1 else ''}: pass "
            "forward=lambda model, x: model(x, ...) to call it the way it needs"
            if extra
            else ""
        )
        raise ModelForwardError(
            f"{model_name(model)} raised inside forward on the probe's {given}: {exc}{hint}"
        ) from exc
    except Exception as exc:
        raise ModelForwardError(
            f"{model_name(model)} raised {type(exc).__name__} inside forward on the probe's input of shape "
            f"{tuple(x.shape)}: {exc}"
        ) from exc


@contextlib.contextmanager
def first_receiver(model: Any, x: torch.Tensor, wanted: Callable[[nn.Module], bool]) -> Iterator[list[nn.Module]]:
    """Collect, during a forward pass, the first of the model's `wanted` modules called on `x` or a view of it."""
    received: list[nn.Module] = []
    storage = x.untyped_storage().data_ptr()

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        if not received and isinstance(first, torch.Tensor) and first.untyped_storage().data_ptr() == storage:
            received.append(module)

    modules = [m for m in kinds.modules_of(model) if wanted(m)] if isinstance(model, nn.Module) else []
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield received
    finally:
        for handle in handles:
            handle.remove()


def _state_arguments(model: Any, batch: int) -> list[Any]:
    """What to pass after the input to a forward that requires more: the model's initial state, then None."""
    required = _required_after_input(model.forward if isinstance(model, nn.Module) else model)
    if not required:
        return []
    init_hidden = getattr(model, "init_hidden", None)
    if not callable(init_hidden):
        return [None] * required
    try:
        state = init_hidden(batch)
    except Exception as exc:
        raise ModelForwardError(
            f"{model_name(model)}.forward needs a state argument and the probe called init_hidden({batch}), which "
            f"raised {type(exc).__name__}: {exc}; pass forward=lambda model, x: ... to call the model yourself"
        ) from exc
    return [state] + [None] * (required - 1)


# By function, bound methods by their __func__ and callable objects (a state tap standing in for a module's forward)
# by their class's __call__ (whose own signatures also have self): reading a signature takes longer than a small
# probe's loss.
_REQUIRED: dict[bool, weakref.WeakKeyDictionary[Any, int]] = {
    True: weakref.WeakKeyDictionary(),
    False: weakref.WeakKeyDictionary(),
}


def _required_after_input(forward: Any) -> int:
    """How many positional arguments without a default `forward` requires after the input (0 when unreadable)."""
    key = getattr(forward, "__func__", None)
    call = vars(type(forward)).get("__call__")
    own = getattr(forward, "__dict__", {})  # a wrapper's __wrapped__ or __signature__: a signature of its own
    if key is None and not inspect.isfunction(forward) and inspect.isfunction(call):
        key = None if "__wrapped__" in own or "__signature__" in own else call
    bound = key is not None
    key, known = key or forward, _REQUIRED[bound]
    with contextlib.suppress(TypeError):  # not weakly referable: read it every time
        if key in known:
            return known[key]
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return 0
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = sum(p.kind in positional and p.default is inspect.Parameter.empty for p in parameters[1:])
    with contextlib.suppress(TypeError):
        known[key] = required
    return required


def _other_layout(options: ProbeOptions, rows: int) -> str:
    """The layout to suggest when the output's rows are not the batch: time-major when they are the timesteps."""
    if rows == options.run_len and options.layout != TIME_BATCH_FEATURE:
        return f"layout={TIME_BATCH_FEATURE!r} (batch_first=False)"
    if rows == options.run_len:
        return "layout='batch-time-feature' (batch_first=True)"
    return "layout= (or batch_first=) in the model's own order"


def _first_tensor(output: Any) -> Any:
    while isinstance(output, (tuple, list)) and not isinstance(output, PackedSequence) and output:
        output = output[0]
    return output


@dataclass(frozen=True)
class Loss:
    """Where the backward pass starts: a scalar loss (`direction` None), or an output and the gradient of the loss
    with respect to it (`direction`): the default loss, sum over the batch of <v, y_T>, has gradient v at each y_T,
    which the backward pass can start from without the loss itself being computed."""

    output: torch.Tensor
    direction: torch.Tensor | None = None
    # The model's output as (seq * batch, ...) rows, unflattened in the input's layout: an order the probe checks
    # where some samples get no gradient at their last step (`flattened_in_the_other_order`).
    rows: torch.Tensor | None = None
    # The model's output shape, and an axis of it as long as the sequence that the input's layout does not read as
    # time (a (batch, seq) output's columns, a (batch, vocab, seq) output's last axis): `check_time_axis` tells.
    shape: tuple[int, ...] = ()
    suspect: int | None = None


def loss_of(output: Any, options: ProbeOptions, generators: Sequence[torch.Generator], batch: int) -> Loss:
    """`loss_fn(output)`, or the default: sum over the batch of <v, y_T>, v a unit vector drawn from the generator;
    with several generators (the seeds of one batched pass), the batch's rows in as many equal blocks, each block's v
    drawn from its own. A `Loss` that `loss_fn` returns (the batched seeds') is taken as it is."""
    if options.loss_fn is not None:
        loss = call_user(options.loss_fn, "loss_fn", output)
        if isinstance(loss, Loss):
            return loss
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            shown = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(f"loss_fn must return a floating scalar tensor, got {shown}")
        return Loss(loss.reshape(()))
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
    rows = None
    if y.dim() == 2 and y.shape[0] == options.run_len * batch and options.layout != BATCH_FEATURE_TIME:
        rows = y  # a language model's output flattened to (seq * batch, vocab) for its cross-entropy
        outer = (options.run_len, batch) if options.layout == TIME_BATCH_FEATURE else (batch, options.run_len)
        y = y.reshape(*outer, -1)
    shape, suspect = tuple(y.shape), None if rows is not None else _suspect_axis(y, options, batch)
    if y.dim() < 2:
        raise ModelInterfaceError(
            f"the model's output has shape {tuple(y.shape)}: no time step to take. Expected {options.layout_name} "
            "or (batch, features); pass loss_fn= to define the loss yourself"
        )
    if y.dim() >= 3:
        y = last_steps(y, options.lengths, options.run_len, options.layout)  # type: ignore[arg-type]
    if y.dim() > 2:
        y = y.reshape(y.shape[0], -1)
    if y.shape[0] != batch:
        raise ModelInterfaceError(
            f"the model's output has {y.shape[0]} rows at its last step but the batch has {batch}: the output's "
            f"layout does not match the input's {options.layout_name}; pass {_other_layout(options, y.shape[0])}, or, "
            "if the model's output is in another layout than its input (or is not a sequence, as a final state "
            "(layers, batch, hidden) is not), loss_fn= to put the loss where it belongs"
        )
    vs = []
    for generator in generators:
        v = torch.randn(y.shape[1], generator=generator, dtype=torch.float64)
        vs.append((v / torch.linalg.vector_norm(v)).to(dtype=y.dtype, device=y.device))  # not Tensor.norm: 20 us
    if len(vs) == 1:  # contiguous, as the loss's own backward would hand it on (a custom backward may view it)
        direction = vs[0].expand(y.shape).contiguous()
    else:
        block = batch // len(vs)
        direction = torch.stack(vs)[:, None].expand(len(vs), block, y.shape[1]).reshape(y.shape)
    return Loss(y, direction, rows, shape, suspect)


def _suspect_axis(y: torch.Tensor, options: ProbeOptions, batch: int) -> int | None:
    """An axis of the output as long as the sequence that the input's layout does not read as time, where the one it
    reads is not that long: a (batch, seq) output's columns, a (batch, vocab, seq) or, from a channels-first input,
    (batch, seq, classes) output's. None where there is none."""
    if y.dim() == 2:
        return 1 if y.shape[0] == batch and y.shape[1] == options.run_len else None
    if y.dim() < 3 or y.shape[options.window.seq_axis(y)] == options.run_len:
        return None
    excluded = (options.window.seq_axis(y), options.window.batch_axis)
    return next((a for a in range(y.dim()) if a not in excluded and y.shape[a] == options.run_len), None)


def check_time_axis(loss: Loss, model: Any, x: torch.Tensor, options: ProbeOptions) -> None:
    """Where the output has an axis as long as the sequence that the input's layout does not read as time: run the
    model on one step less (no gradient) and refuse the loss where that axis is one shorter and the one read as time
    is not: the timesteps are there, and the loss sat on the last feature of every step (or, for a (batch, seq)
    output, on every step). Where the shorter run fails or tells nothing, the output is read as the layout says."""
    if loss.suspect is None:
        return
    shorter = x.detach().narrow(options.window.seq_axis(x), 0, options.run_len - 1)
    try:
        with torch.no_grad():
            y = _first_tensor(run_forward(model, shorter, options))
    except GradHealthError:
        return
    if not isinstance(y, torch.Tensor) or y.dim() != len(loss.shape):
        return
    shrank = {a for a in range(y.dim()) if y.shape[a] == loss.shape[a] - 1}
    read_as_time = options.window.seq_axis(y) if y.dim() >= 3 else None
    if loss.suspect not in shrank or read_as_time in shrank:
        return
    if read_as_time is None:
        raise ModelInterfaceError(
            f"the model's output has shape {loss.shape}: as many columns as the {options.run_len} timesteps, and one "
            "value per step (on one step less the model returns one column less), where the default loss would take "
            "them as features; pass loss_fn= to put the loss on the last step, e.g. loss_fn=lambda y: y[:, -1].sum()"
        )
    raise ModelInterfaceError(
        f"the model's output has shape {loss.shape}: in the input's {options.layout_name} its time axis would be "
        f"axis {read_as_time}, but axis {loss.suspect} holds the {options.run_len} timesteps (on one step less it is "
        "one shorter): the output is in another layout than the input. Pass loss_fn= to put the loss on its last "
        f"step, e.g. loss_fn=lambda y: y.select({loss.suspect}, -1).sum()"
    )


def in_the_other_order(loss: Loss, options: ProbeOptions, batch: int) -> Loss | None:
    """For a loss on a flattened output: the same loss on the rows read in the other order (time-major for a
    batch-first input, batch-major for a time-major one). None for other losses, and for a padded batch (whose last
    steps are each sample's own)."""
    if loss.rows is None or options.lengths is not None:
        return None
    if options.layout == TIME_BATCH_FEATURE:
        return Loss(loss.rows.reshape(batch, options.run_len, -1)[:, -1], loss.direction)
    return Loss(loss.rows.reshape(options.run_len, batch, -1)[-1], loss.direction)


def refuse_the_other_order(reached: np.ndarray, reached_otherwise: np.ndarray, options: ProbeOptions) -> None:
    """Refuse a flattened output whose rows, read in the other order, reach more samples' last steps (`reached`:
    per sample, whether its last step got gradient)."""
    if reached_otherwise.sum() > reached.sum():
        order = "batch-major (batch * seq)" if options.layout == TIME_BATCH_FEATURE else "time-major (seq * batch)"
        raise ModelInterfaceError(
            f"the model's output is flattened to (seq * batch, ...) rows, read in the input's {options.layout_name}, "
            f"and samples {np.flatnonzero(~reached).tolist()} got no gradient at their last step; read {order}, "
            f"{int(reached_otherwise.sum())} of {reached.size} do: its rows are {order}. Pass loss_fn= to put the "
            "loss on each sample's last step"
        )
