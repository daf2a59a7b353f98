"""The recurrent module whose states `measure="hidden"/"cell"` reads, found and checked before the model runs."""

from __future__ import annotations

from typing import Any

from torch import nn

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.engine.sequences import Window
from pytest_gradhealth.engine.taps.base import StateRequest, Tap
from pytest_gradhealth.errors import InvalidArgumentError, ModelInterfaceError


def state_tap(
    model: Any, measure: str, layer: int | None, module: Any, cell: Any, contributions: bool, window: Window
) -> Tap:
    """The tap for the module that `module=`/`cell=` name, or the model's only recurrent module."""
    if cell is not None:
        found, path = _named(model, cell, "cell")
        if isinstance(found, nn.RNNBase):
            raise InvalidArgumentError(
                f"cell= names a module called once per timestep, but {_shown(path)} is an nn.{type(found).__name__} "
                "that runs the whole sequence; pass module= for it"
            )
    elif module is not None:
        found, path = _named(model, module, "module")
        if not isinstance(found, nn.RNNBase):
            raise InvalidArgumentError(
                f"module= must name an nn.RNN, nn.LSTM or nn.GRU, but {_shown(path)} is a {type(found).__name__}; "
                "for a module your model calls once per timestep, pass cell= instead"
            )
    else:
        found, path = _only_recurrent_module(model, measure)
    kind = kinds.kind_of(found)
    request = StateRequest(measure, _check_target(found, kind, path, measure, layer, contributions), contributions)
    tap = kind.state_tap if kind is not None and kind.state_tap is not None else kinds.CellStatesTap
    return tap(path, found, window, request)  # type: ignore[arg-type]


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
    return ", ".join(f"{n!r} ({type(m).__name__})" for n, m, _ in kinds.contained(model, *kinds.RECURRENT_ROLES))


def _only_recurrent_module(model: Any, measure: str) -> tuple[nn.Module, str]:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"measure={measure!r} on a plain callable needs the recurrent module: pass module= (an nn.RNN, "
            "nn.LSTM or nn.GRU it calls) or cell= (the module it calls once per timestep)"
        )
    found = kinds.contained(model, *kinds.RECURRENT_ROLES)
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
    path, module, _ = found[0]
    return module, path


def _check_target(
    module: nn.Module, kind: kinds.ModuleKind | None, path: str | None, measure: str, layer: int | None, weights: bool
) -> int:
    """The measured layer, after checking that the options fit the module."""
    name = type(module).__name__
    if measure == "cell" and not (kind is not None and kind.cell_state):
        raise InvalidArgumentError(
            f"measure='cell' reads an LSTM's cell state, but {_shown(path)} is a {name}, which has none; "
            "use measure='hidden'"
        )
    if kind is None or kind.role != "sequence":
        if layer not in (None, 0):
            raise InvalidArgumentError(
                f"layer={layer} was asked but {_shown(path)} is a cell, which has one layer; leave layer out"
            )
        if weights and not (kind is not None and kind.contributions):
            raise InvalidArgumentError(
                f"contributions=True needs the recurrent weight of an nn.RNN/LSTM/GRU or nn.RNNCell/LSTMCell/GRUCell, "
                f"but {_shown(path)} is a {name}; leave contributions out"
            )
        return 0
    if module.bidirectional:
        raise ModelInterfaceError(
            f"{_shown(path)} is a bidirectional {name}: its backward direction runs from the end of the sequence, "
            "so it cannot be split in time to expose its states; use measure='input' for it"
        )
    layers = int(module.num_layers)
    if layer is None:
        return layers - 1
    if layer >= layers:
        raise InvalidArgumentError(
            f"layer={layer} is out of range: {_shown(path)} has {layers} layer(s), 0..{layers - 1}; "
            "leave layer out for the top one"
        )
    return int(layer)
