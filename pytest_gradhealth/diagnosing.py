"""`diagnose`: why the gradient vanishes, read from the recurrent layers along the probe's own trajectory, and what
the standard remedies would change, measured on copies of the model.

The probe runs once with forward pre-hooks on every nn.RNN/LSTM/GRU and cell, which record what each was called with
(the same inputs, the same states, the same mode). Each layer is then recomputed step by step in float64 from those
inputs and its weights, reading the gates that a fused kernel keeps to itself. Dropout between the layers of a
multi-layer module is not replayed (the probe's default mode is eval, where there is none).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from pytest_gradhealth.diagnosis import (
    GATE_CLOSED,
    GATE_OPEN,
    MEMORY_GATES,
    SATURATED,
    Diagnosis,
    GateStats,
    LayerDiagnosis,
    WhatIf,
)
from pytest_gradhealth.engine import kinds
from pytest_gradhealth.errors import GradHealthError, InvalidArgumentTypeError
from pytest_gradhealth.probing import make_options, measure_profile

Calls = dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]


def diagnose(
    model: nn.Module | Callable[..., Any], seq_len: int, *, what_ifs: bool = True, **options: Any
) -> Diagnosis:
    """Probe `model` as `probe(model, seq_len, **options)` does and explain the profile, layer by layer.

    For each recurrent layer found (nn.LSTM/GRU/RNN, each layer and direction; nn.LSTMCell/GRUCell/RNNCell called in
    a loop): gate statistics and per-unit memory timescales of gated layers, saturation, dead units, the spectrum of
    W_hh and the mean-field per-step factor of vanilla RNNs. With `what_ifs` (default), each standard remedy that
    applies to the model's layers is applied to a copy and probed the same way. The model is left as it was.
    """
    if not isinstance(what_ifs, bool):
        raise InvalidArgumentTypeError(f"what_ifs must be True or False, got {what_ifs!r}")
    probe_options = make_options(model, seq_len, options)
    modules = _recurrent_modules(model)
    calls: Calls = {path: [] for path in modules}
    with _recording(modules, calls):
        profile = measure_profile(model, probe_options)
    layers = [layer for path, module in modules.items() for layer in _layers(path, module, calls[path])]
    layers += [
        LayerDiagnosis(
            path,
            type(module).__name__,
            note=f"gates not available for {type(module).__name__}: a "
            "module of the model's own whose step equations the registry of module kinds does not know",
        )
        for path, module, _ in kinds.contained(model, "declared")
    ]
    note = "" if modules else "no nn.RNN/LSTM/GRU or cell found: no gates to read"
    remedies = [_measured(model, change, probe_options) for change in applicable(model, seq_len)] if what_ifs else []
    return Diagnosis(profile, layers, remedies, note)


# -- recording the trajectory ----------------------------------------------------------------------------


def _recurrent_modules(model: Any) -> dict[str, nn.Module]:
    """The model's recurrent modules and cells, as the registry of module kinds finds them."""
    return {path: module for path, module, _ in kinds.contained(model, *kinds.RECURRENT_ROLES)}


@contextlib.contextmanager
def _recording(modules: dict[str, nn.Module], calls: Calls) -> Iterator[None]:
    """Record each module's call arguments, detached; the hooks go with the block (a dtype copy carries them too)."""

    def hook_for(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls[path].append((_detached(args), _detached(kwargs)))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(path), with_kwargs=True) for path, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, PackedSequence):
        return value._replace(data=value.data.detach().clone())  # type: ignore[attr-defined]
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


# -- one step of each kind, in float64 ---------------------------------------------------------------------


def _weights(module: nn.Module, suffix: str) -> dict[str, torch.Tensor | None]:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    found = {name: getattr(module, name + suffix, None) for name in names}
    return {name: None if w is None else w.detach().to(torch.float64) for name, w in found.items()}


def _pre(x: torch.Tensor, h: torch.Tensor, w: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and recurrent pre-activations, x W_ih^T + b_ih and h W_hh^T + b_hh."""
    gi, gh = x @ w["weight_ih"].T, h @ w["weight_hh"].T  # type: ignore[union-attr]
    if w["bias_ih"] is not None:
        gi, gh = gi + w["bias_ih"], gh + w["bias_hh"]
    return gi, gh


def _step(kind: str, x: torch.Tensor, state: tuple[torch.Tensor, ...], w: dict, relu: bool) -> dict[str, torch.Tensor]:
    """One step: the new state ("h", and "c" for an LSTM) and what the diagnosis reads (gates, pre-activations)."""
    h = state[0]
    gi, gh = _pre(x, h, w)
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
        c = f * state[1] + i * torch.tanh(g)
        h = o * torch.tanh(c)
        if w["weight_hr"] is not None:
            h = h @ w["weight_hr"].T
        return {"h": h, "c": c, "forget": f, "input": i, "output": o}
    if kind == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return {"h": (1 - z) * n + z * h, "update": z, "reset": r}
    pre = gi + gh
    return {"h": torch.relu(pre) if relu else torch.tanh(pre), "pre": pre}


# -- layers ----------------------------------------------------------------------------------------------


def _layers(path: str, module: nn.Module, calls: list) -> list[LayerDiagnosis]:
    kind = kinds.kind_of(module)
    assert kind is not None  # found through the registry
    if kind.recurrence is None:
        return [LayerDiagnosis(path, kind.name, note=f"gates not available for {kind.name}: no step equations known")]
    if not calls:
        return [LayerDiagnosis(path, kind.name, note="not called in the probe's forward pass")]
    if kind.role == "sequence":
        return _fused_layers(path, module, calls)  # type: ignore[arg-type]
    return [_cell_layer(path, module, calls)]  # type: ignore[arg-type]


def _fused_layers(path: str, module: nn.RNNBase, calls: list) -> list[LayerDiagnosis]:
    kind = _recurrence(module)
    records: dict[tuple[int, int], list[dict[str, torch.Tensor]]] = {}
    masks = []
    for args, kwargs in calls:
        x, mask = _time_major(args[0] if args else kwargs["input"], module.batch_first)
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if mask is not None and module.bidirectional:
            return [
                LayerDiagnosis(path, kind, note="a packed batch through a bidirectional module is not replayed here")
            ]
        masks.append(mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool))
        for key, steps in _replay(module, kind, x, hx, masks[-1]).items():
            records.setdefault(key, []).append(steps)
    mask = torch.cat(masks, dim=1)
    layers = []
    for (layer, direction), parts in records.items():
        merged = {name: torch.cat([p[name] for p in parts], dim=1) for name in parts[0]}
        diagnosis = LayerDiagnosis(path, kind, layer, ("forward", "reverse")[direction], int(module.hidden_size))
        suffix = f"_l{layer}{'_reverse' if direction else ''}"
        _fill(diagnosis, merged, mask, _weights(module, suffix)["weight_hh"])
        layers.append(diagnosis)
    return layers


def _time_major(inputs: Any, batch_first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(seq, batch, features) float64 inputs, and which steps are real when they came packed."""
    if isinstance(inputs, PackedSequence):
        x, lengths = pad_packed_sequence(inputs)
        mask = torch.arange(x.shape[0])[:, None] < lengths[None, :]
        return x.to(torch.float64), mask
    if inputs.dim() == 2:  # an unbatched sequence
        inputs = inputs.unsqueeze(0 if batch_first else 1)
    x = inputs.transpose(0, 1) if batch_first else inputs
    return x.to(torch.float64), None


def _replay(
    module: nn.RNNBase, kind: str, x: torch.Tensor, hx: Any, mask: torch.Tensor
) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Every layer and direction step by step: what each step read, stacked over time, by (layer, direction)."""
    directions = 2 if module.bidirectional else 1
    if hx is not None and not isinstance(hx, (tuple, list)):
        hx = (hx,)
    out: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            w = _weights(module, f"_l{layer}{'_reverse' if direction else ''}")
            index = layer * directions + direction
            state = _initial(module, kind, x.shape[1], hx, index)
            steps = range(x.shape[0] - 1, -1, -1) if direction else range(x.shape[0])
            seen: dict[int, dict[str, torch.Tensor]] = {}
            for t in steps:
                result = _step(kind, x[t], state, w, module.mode == "RNN_RELU")
                real = mask[t][:, None]  # past a sample's end its state stays, as packing leaves it
                state = tuple(torch.where(real, result[k], s) for k, s in zip(("h", "c"), state, strict=False))
                seen[t] = result
            out[(layer, direction)] = {k: torch.stack([seen[t][k] for t in range(x.shape[0])]) for k in seen[0]}
            outputs.append(out[(layer, direction)]["h"])
        x = torch.cat(outputs, dim=-1)
    return out


def _initial(module: nn.RNNBase, kind: str, batch: int, hx: Any, index: int) -> tuple[torch.Tensor, ...]:
    sizes = [module.proj_size or module.hidden_size, module.hidden_size] if kind == "LSTM" else [module.hidden_size]
    if hx is None:
        return tuple(torch.zeros(batch, size, dtype=torch.float64) for size in sizes)
    return tuple(h.to(torch.float64)[index] if h.dim() == 3 else h.to(torch.float64) for h in hx)


def _cell_layer(path: str, module: nn.RNNCellBase, calls: list) -> LayerDiagnosis:
    kind = _recurrence(module)
    w = _weights(module, "")
    steps = []
    for args, kwargs in calls:
        x = (args[0] if args else kwargs["input"]).to(torch.float64)
        x = x if x.dim() == 2 else x[None]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if hx is None:
            state = (torch.zeros(x.shape[0], module.hidden_size, dtype=torch.float64),) * (2 if kind == "LSTM" else 1)
        else:
            state = tuple(h.to(torch.float64).reshape(x.shape[0], -1) for h in (hx if kind == "LSTM" else (hx,)))
        steps.append(_step(kind, x, state, w, kind == "RNN (ReLU)"))
    merged = {k: torch.stack([s[k] for s in steps]) for k in steps[0]}
    label = type(module).__name__ + (" (ReLU)" if kind == "RNN (ReLU)" else "")
    diagnosis = LayerDiagnosis(path, label, hidden_size=int(module.hidden_size))
    _fill(diagnosis, merged, torch.ones(merged["h"].shape[:2], dtype=torch.bool), w["weight_hh"], kind)
    return diagnosis


def _fill(
    diagnosis: LayerDiagnosis,
    steps: dict[str, torch.Tensor],
    mask: torch.Tensor,
    weight_hh: torch.Tensor,
    kind: str | None = None,
) -> None:
    """Statistics over the real (step, sample) positions of one layer's replay."""
    kind = kind or diagnosis.kind
    real = mask.reshape(-1)

    def values(name: str) -> torch.Tensor:  # (positions, units)
        v = steps[name]
        return v.reshape(-1, v.shape[-1])[real]

    gate_names = {"LSTM": ("forget", "input", "output"), "GRU": ("update", "reset")}.get(kind, ())
    for name in gate_names:
        v = values(name)
        diagnosis.gates[name] = GateStats(
            float(v.mean()), float((v < GATE_CLOSED).double().mean()), float((v > GATE_OPEN).double().mean())
        )
    if kind in MEMORY_GATES:
        diagnosis.timescales = timescales(values(MEMORY_GATES[kind]).mean(dim=0).numpy())
        return
    h = values("h")
    if kind == "RNN":
        diagnosis.saturated = float((h.abs() > SATURATED).double().mean())
        derivative = 1 - h**2
    else:
        diagnosis.dead = float((h <= 0).all(dim=0).double().mean())
        derivative = (values("pre") > 0).double()
    eig = torch.linalg.eigvals(weight_hh)
    diagnosis.spectral_radius = float(eig.abs().max())
    diagnosis.spectral_norm = float(torch.linalg.matrix_norm(weight_hh, ord=2))
    # ||W^T D u||^2 for a random unit u has mean sum_j D_j^2 ||W_j||^2 / H: chi_1 without the iid assumption.
    rows = (weight_hh**2).sum(dim=1)
    diagnosis.mean_field_factor = math.sqrt(float((derivative**2 @ rows).mean()) / weight_hh.shape[0])


def timescales(mean_gate: np.ndarray) -> np.ndarray:
    """Each unit's memory timescale in steps, -1 / ln(mean memory gate): the lag over which the gate's product
    falls by a factor e. Infinite for a gate that never closes, 0 for one that is always shut."""
    with np.errstate(divide="ignore"):
        return np.where(mean_gate >= 1.0, np.inf, -1.0 / np.log(np.clip(mean_gate, 0.0, 1.0)))


# -- remedies --------------------------------------------------------------------------------------------

Remedy = Callable[[nn.Module, torch.Generator], None]


def applicable(model: Any, seq_len: int) -> list[tuple[str, Remedy]]:
    """The standard remedies that apply to the model's recurrent layers, least intrusive first."""
    found = {_recurrence(m) for m in _recurrent_modules(model).values()}
    biased = any(getattr(m, "bias", False) is not False for m in _recurrent_modules(model).values())
    remedies: list[tuple[str, Remedy]] = []
    if "LSTM" in found and biased:
        remedies += [(f"forget-gate bias +{k}", _gate_bias("LSTM", 1, k)) for k in (1, 2, 3)]
        if seq_len > 2:
            remedies.append((f"chrono initialisation (T_max={seq_len})", _chrono(seq_len)))
    if "GRU" in found and biased:
        remedies += [(f"update-gate bias +{k}", _gate_bias("GRU", 1, k)) for k in (1, 2, 3)]
    if found - {None}:
        remedies.append(("orthogonal weight_hh", _orthogonal))
    if "RNN (ReLU)" in found:
        remedies.append(("identity weight_hh, zero recurrent bias (IRNN)", _identity))
    return remedies


def _recurrence(module: nn.Module) -> str | None:
    """The step equations of a recurrent module: its kind's recurrence, "RNN (ReLU)" for a ReLU one."""
    kind = kinds.kind_of(module)
    recurrence = None if kind is None else kind.recurrence
    relu = getattr(module, "mode", None) == "RNN_RELU" or getattr(module, "nonlinearity", None) == "relu"
    return "RNN (ReLU)" if recurrence == "RNN" and relu else recurrence


def _parameters(model: nn.Module, kind: str, name: str) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Each recurrent module of `kind` in `model`, with each of its parameters named `name` (per layer, direction)."""
    for module in _recurrent_modules(model).values():
        if kind in ("*", _recurrence(module)):
            for pname, parameter in module.named_parameters(recurse=False):
                if pname == name or pname.startswith(name + "_l"):
                    yield module, parameter


def _gate_bias(kind: str, block: int, amount: float) -> Remedy:
    """Add `amount` to gate `block` of the input bias (LSTM gates i, f, g, o; GRU r, z, n)."""

    def apply(model: nn.Module, _generator: torch.Generator) -> None:
        for module, bias in _parameters(model, kind, "bias_ih"):
            h = module.hidden_size
            bias[block * h : (block + 1) * h] += amount

    return apply


def _chrono(t_max: int) -> Remedy:
    """Tallec & Ollivier (2018): forget bias log(u), u ~ U(1, T_max - 1), input bias its negative; hidden biases 0."""

    def apply(model: nn.Module, generator: torch.Generator) -> None:
        for module, bias_ih in _parameters(model, "LSTM", "bias_ih"):
            h = module.hidden_size
            u = 1 + (t_max - 2) * torch.rand(h, generator=generator, dtype=torch.float64)
            bias_ih[h : 2 * h] = torch.log(u).to(bias_ih.dtype)
            bias_ih[:h] = -bias_ih[h : 2 * h]
        for module, bias_hh in _parameters(model, "LSTM", "bias_hh"):
            bias_hh[: 2 * module.hidden_size] = 0

    return apply


def _orthogonal(model: nn.Module, generator: torch.Generator) -> None:
    """Each gate's block of weight_hh orthogonal (Haar-distributed, drawn from the probe's seed)."""
    for module, weight in _parameters(model, "*", "weight_hh"):
        rows = module.hidden_size
        for start in range(0, weight.shape[0], rows):
            block = weight[start : start + rows]
            tall = max(block.shape)
            q, r = torch.linalg.qr(torch.randn(tall, min(block.shape), generator=generator, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))
            block.copy_(q if block.shape[0] == tall else q.T)


def _identity(model: nn.Module, _generator: torch.Generator) -> None:
    """Le, Jaitly & Hinton (2015): a ReLU recurrence with W_hh = I and zero biases carries its state unchanged."""
    for module, weight in _parameters(model, "RNN (ReLU)", "weight_hh"):
        weight.copy_(torch.eye(module.hidden_size, dtype=weight.dtype))
    for name in ("bias_ih", "bias_hh"):
        for _, bias in _parameters(model, "RNN (ReLU)", name):
            bias.zero_()


def _measured(model: Any, remedy: tuple[str, Remedy], options: Any) -> WhatIf:
    change, apply = remedy
    try:
        changed = copy.deepcopy(model)
    except Exception as exc:
        raise GradHealthError(f"could not copy {type(model).__name__} to try '{change}' on it: {exc}") from exc
    generator = torch.Generator().manual_seed(options.seed)
    with torch.no_grad():
        apply(changed, generator)
    profile = measure_profile(changed, options)
    profile.name = f"{profile.name} [{change}]"
    return WhatIf(change, profile)
