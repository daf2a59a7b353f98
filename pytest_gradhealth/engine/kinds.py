"""The one registry of module kinds: what the engine knows about each kind of module a sequence model is built from.

A kind answers, for a module of that kind: its input size, its hidden size, whether it is a recurrent layer that runs
the whole sequence (read by the fused-state tap) or a cell called once per step (the cell-loop tap), whether it has an
LSTM cell state, and the advice to give when the gradient vanishes through it. Model-level questions (the layout,
the input kind and size, the hidden size, the advice) are answered from the modules a model contains, never from its
class name. To teach the engine a new kind, add one `ModuleKind` to `KINDS` (docs/architecture.md, "Engine").
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from pytest_gradhealth.engine.sequences import BATCH_FEATURE_TIME, BATCH_TIME_FEATURE, TIME_BATCH_FEATURE
from pytest_gradhealth.engine.taps.cells import CellStatesTap
from pytest_gradhealth.engine.taps.fused import FusedStatesTap

# What to change when the gradient vanishes, by recurrence.
_ADVICE = {
    "LSTM": (
        "raise the LSTM's forget-gate bias (bias_ih_l*[H:2H]) to 1-3 so the cell state keeps its "
        "gradient; pytest_gradhealth.reference.lstm(forget_bias=2.0) shows the effect"
    ),
    "GRU": "bias the GRU's update gate towards keeping its state (bias_ih_l*[H:2H] positive)",
    "RNN": (
        "a vanilla RNN keeps a fixed fraction of its gradient per step; use a gated cell (LSTM with a "
        "forget-gate bias, GRU) or an orthogonal weight_hh"
    ),
}


def _fused(mode: str) -> Callable[[nn.Module], bool]:
    return lambda m: isinstance(m, nn.RNNBase) and m.mode == mode


@dataclass(frozen=True)
class ModuleKind:
    """One kind of module: how to recognise it and what the engine reads from it."""

    name: str
    matches: Callable[[nn.Module], bool]
    role: str  # "sequence" (runs the whole sequence), "cell" (once per step), "embedding", "projection", "declared"
    input_size: Callable[[Any], int] | None = None  # features per step of the float input it takes
    vocab_size: Callable[[Any], int] | None = None  # tokens it takes, for a kind that takes token indices
    hidden_size: Callable[[Any], int | None] | None = None
    state_tap: type[FusedStatesTap] | type[CellStatesTap] | None = None
    cell_state: bool = False  # an LSTM's c_t besides h_t
    contributions: bool = False  # its recurrent weights can be split by step (weight_hh_l*, or a cell's weight_hh)
    advice: str | None = None  # what to change when the gradient vanishes through it
    recurrence: str | None = None  # the step equations diagnose() replays to read its gates: "LSTM", "GRU", "RNN"
    layout: str = BATCH_TIME_FEATURE  # the layout of its input, where it declares none


def _recurrent(
    name: str,
    matches: Callable[[nn.Module], bool],
    tap: type[FusedStatesTap] | type[CellStatesTap],
    recurrence: str,
) -> ModuleKind:
    """A built-in recurrent module or cell: `input_size` and `hidden_size` attributes, splittable recurrent weights,
    the advice and the step equations of its `recurrence`."""
    return ModuleKind(
        name,
        matches,
        "sequence" if tap is FusedStatesTap else "cell",
        input_size=lambda m: int(m.input_size),
        hidden_size=lambda m: int(m.hidden_size),
        state_tap=tap,
        cell_state=recurrence == "LSTM",
        contributions=True,
        advice=_ADVICE[recurrence],
        recurrence=recurrence,
    )


def _instance(cls: type[nn.Module]) -> Callable[[nn.Module], bool]:
    return lambda m: isinstance(m, cls)


KINDS: tuple[ModuleKind, ...] = (
    _recurrent("LSTM", _fused("LSTM"), FusedStatesTap, "LSTM"),
    _recurrent("GRU", _fused("GRU"), FusedStatesTap, "GRU"),
    _recurrent("RNN", _fused("RNN_TANH"), FusedStatesTap, "RNN"),
    _recurrent("RNN (ReLU)", _fused("RNN_RELU"), FusedStatesTap, "RNN"),
    _recurrent("LSTMCell", _instance(nn.LSTMCell), CellStatesTap, "LSTM"),
    _recurrent("GRUCell", _instance(nn.GRUCell), CellStatesTap, "GRU"),
    _recurrent("RNNCell", _instance(nn.RNNCell), CellStatesTap, "RNN"),
    ModuleKind("Embedding", _instance(nn.Embedding), "embedding", vocab_size=lambda m: int(m.num_embeddings)),
    ModuleKind("Linear", _instance(nn.Linear), "projection", input_size=lambda m: int(m.in_features)),
    ModuleKind(
        "Conv1d",
        _instance(nn.Conv1d),
        "projection",
        input_size=lambda m: int(m.in_channels),
        layout=BATCH_FEATURE_TIME,
    ),
    # Last: a module of the user's own (an IndRNN, an SSM layer) that says what it takes, as nn.RNN does.
    ModuleKind(
        "declares input_size",
        lambda m: isinstance(getattr(m, "input_size", None), int),
        "declared",
        input_size=lambda m: int(m.input_size),
        hidden_size=lambda m: int(m.hidden_size) if isinstance(getattr(m, "hidden_size", None), int) else None,
    ),
)

RECURRENT_ROLES = ("sequence", "cell")


def kind_of(module: nn.Module) -> ModuleKind | None:
    """The registered kind of `module`, or None for a module the engine has no entry for."""
    return next((kind for kind in KINDS if kind.matches(module)), None)


# Within `walked_once(model)`, by id(model): the model and, once walked, (path, module, kind) of each of its modules.
_WALKS: contextvars.ContextVar[dict[int, tuple[Any, list[tuple[str, nn.Module, ModuleKind | None]] | None]] | None] = (
    contextvars.ContextVar("walks", default=None)
)


@contextlib.contextmanager
def walked_once(model: Any) -> Iterator[None]:
    """Within it, `model`'s modules are walked once: a probe asks many questions of the model's structure (its layout,
    input module, hidden size, advice, whether it can be renormalised), and a walk costs each of them. Only `model`
    is remembered, and only until the block that named it ends: another model (a converted copy, a factory's) is
    walked when asked and not kept alive."""
    walks, token = _WALKS.get(), None
    if walks is None:
        walks = {}
        token = _WALKS.set(walks)
    named = id(model) not in walks
    if named:
        walks[id(model)] = (model, None)
    try:
        yield
    finally:
        if named:
            del walks[id(model)]
        if token is not None:
            _WALKS.reset(token)


def _walk(model: nn.Module) -> list[tuple[str, nn.Module, ModuleKind | None]]:
    """(path, module, kind) of every module of `model` (itself included), in order; kind None where none is known."""
    walks = _WALKS.get()
    seen = None if walks is None else walks.get(id(model))
    if seen is not None and seen[0] is model and seen[1] is not None:
        return seen[1]
    found = [(path, module, kind_of(module)) for path, module in model.named_modules()]
    if seen is not None and seen[0] is model:
        walks[id(model)] = (model, found)  # type: ignore[index]
    return found


def modules_of(model: nn.Module) -> list[nn.Module]:
    """`model.modules()`, from the walk."""
    return [module for _, module, _ in _walk(model)]


def contained(model: Any, *roles: str) -> list[tuple[str, nn.Module, ModuleKind]]:
    """(path, module, kind) of each submodule of `model` (itself included) whose kind has one of `roles`, in order."""
    if not isinstance(model, nn.Module):
        return []
    return [(path, module, kind) for path, module, kind in _walk(model) if kind is not None and kind.role in roles]


def first_input_module(model: Any) -> tuple[nn.Module, ModuleKind] | None:
    """The first registered module in the model: the one that receives the input, by registration order."""
    found = contained(model, "sequence", "cell", "embedding", "projection", "declared")
    return None if not found else found[0][1:]  # type: ignore[return-value]


def layout_of(model: Any) -> str:
    """The layout the model declares: the `batch_first` of the first module that has one (the model itself, an
    nn.RNN/LSTM/GRU, nn.MultiheadAttention, a Transformer layer, a user's recurrent module), else the layout of the
    first registered module that receives the input (channels-first for a convolution), else batch-first.

    PyTorch's own default is time-major, and a probe in the other layout would measure another sequence."""
    if isinstance(model, nn.Module):
        for module in modules_of(model):
            declared = getattr(module, "batch_first", None)
            if isinstance(declared, bool):
                return BATCH_TIME_FEATURE if declared else TIME_BATCH_FEATURE
    first = first_input_module(model)
    return BATCH_TIME_FEATURE if first is None else first[1].layout


def hidden_size_of(model: Any) -> int | None:
    """The hidden size of the model's first recurrent module or cell, when it has one."""
    for _, module, kind in contained(model, *RECURRENT_ROLES, "declared"):
        size = None if kind.hidden_size is None else kind.hidden_size(module)
        if size is not None:
            return size
    return None


def embedding_of(model: Any) -> nn.Module | None:
    """The model's first embedding, where token inputs become vectors."""
    found = contained(model, "embedding")
    return None if not found else found[0][1]


def advice_for(model: Any) -> str | None:
    """What to change when the gradient vanishes, from the first recurrent module the model contains (None when it
    contains none the registry knows)."""
    found = contained(model, *RECURRENT_ROLES)
    return next((kind.advice for _, _, kind in found if kind.advice), None)
