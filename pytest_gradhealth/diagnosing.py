"""`diagnose`: why the gradient vanishes, read from the recurrent layers along the probe's own trajectory, and what
the standard remedies would change, measured on copies of the model.

The probe runs once with forward pre-hooks on every nn.RNN/LSTM/GRU and cell, which record what each was called with
(the same inputs, the same states, the same mode). Each layer is then recomputed step by step in float64, on the
CPU, from those inputs and its weights, reading the gates that a fused kernel keeps to itself. Dropout between the
layers of a multi-layer module is not replayed (the probe's default mode is eval, where there is none).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd import forward_ad
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
from pytest_gradhealth.engine.factories import is_factory
from pytest_gradhealth.engine.forward import model_name
from pytest_gradhealth.errors import GradHealthError, InvalidArgumentError, InvalidArgumentTypeError
from pytest_gradhealth.probing import make_options, measure, measure_profile

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
    if is_factory(model):
        raise InvalidArgumentError(
            f"diagnose reads the gates of one model and tries remedies on copies of it, so it takes the model, not "
            f"a factory: pass {model_name(model)}() (with seeds=N its inputs are drawn N times)"
        )
    probe_options = make_options(model, seq_len, options)
    modules = _recurrent_modules(model)
    calls: Calls = {path: [] for path in modules}
    with _recording(modules, calls):  # the gates along the first draw's trajectory
        profile = measure_profile(model, replace(probe_options, seeds=None))
    if probe_options.seeds is not None:  # the figures, as the probe and the assertions measure them
        profile = measure(model, probe_options)
    seed = probe_options.seed
    layers = [layer for path, module in modules.items() for layer in _layers(path, module, calls[path], seed)]
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
    """A copy on the CPU, where the replay runs whatever device the probe used."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, PackedSequence):
        packed = value.to("cpu")
        return packed._replace(data=packed.data.detach().clone())  # type: ignore[attr-defined]
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


# -- one step of each kind, in float64 ---------------------------------------------------------------------


def _weights(module: nn.Module, suffix: str) -> dict[str, torch.Tensor | None]:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    found = {name: getattr(module, name + suffix, None) for name in names}
    return {name: None if w is None else w.detach().to("cpu", torch.float64) for name, w in found.items()}


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


def _layers(path: str, module: nn.Module, calls: list, seed: int) -> list[LayerDiagnosis]:
    kind = kinds.kind_of(module)
    assert kind is not None  # found through the registry
    if kind.recurrence is None:
        return [LayerDiagnosis(path, kind.name, note=f"gates not available for {kind.name}: no step equations known")]
    if not calls:
        return [LayerDiagnosis(path, kind.name, note="not called in the probe's forward pass")]
    if kind.role == "sequence":
        return _fused_layers(path, module, calls, seed)  # type: ignore[arg-type]
    return [_cell_layer(path, module, calls, seed)]  # type: ignore[arg-type]


def _fused_layers(path: str, module: nn.RNNBase, calls: list, seed: int) -> list[LayerDiagnosis]:
    kind = _recurrence(module)
    records: dict[tuple[int, int], list[dict[str, torch.Tensor]]] = {}
    flows: dict[tuple[int, int], torch.Tensor] = {}
    masks = []
    for args, kwargs in calls:
        x, mask = _time_major(args[0] if args else kwargs["input"], module.batch_first)
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if mask is not None and module.bidirectional:
            return [
                LayerDiagnosis(path, kind, note="a packed batch through a bidirectional module is not replayed here")
            ]
        masks.append(mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool))
        steps_by_layer, flows_by_layer = _replay(module, kind, x, hx, masks[-1], seed)
        for key, steps in steps_by_layer.items():
            records.setdefault(key, []).append(steps)
        for key, flow in flows_by_layer.items():  # calls are separate sequences: their flows add
            flows[key] = flows.get(key, 0) + flow
    mask = torch.cat(masks, dim=1)
    layers = []
    for (layer, direction), parts in records.items():
        merged = {name: torch.cat([p[name] for p in parts], dim=1) for name in parts[0]}
        diagnosis = LayerDiagnosis(path, kind, layer, ("forward", "reverse")[direction], int(module.hidden_size))
        suffix = f"_l{layer}{'_reverse' if direction else ''}"
        _fill(diagnosis, merged, mask, _weights(module, suffix)["weight_hh"])
        if (layer, direction) in flows:
            _share(diagnosis, flows[(layer, direction)])
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
    module: nn.RNNBase, kind: str, x: torch.Tensor, hx: Any, mask: torch.Tensor, seed: int = 0
) -> tuple[dict[tuple[int, int], dict[str, torch.Tensor]], dict[tuple[int, int], torch.Tensor]]:
    """Every layer and direction step by step: what each step read, stacked over time, by (layer, direction); and
    for an LSTM, each layer's path flows (`path_flows`) over its own inputs, in the order it reads them."""
    directions = 2 if module.bidirectional else 1
    if hx is not None and not isinstance(hx, (tuple, list)):
        hx = (hx,)
    out: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    flows: dict[tuple[int, int], torch.Tensor] = {}
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
            if kind == "LSTM":
                order = list(steps)
                initial = _initial(module, kind, x.shape[1], hx, index)
                flows[(layer, direction)] = path_flows(x[order], initial, w, mask[order], seed)
        x = torch.cat(outputs, dim=-1)
    return out, flows


def _initial(module: nn.RNNBase, kind: str, batch: int, hx: Any, index: int) -> tuple[torch.Tensor, ...]:
    sizes = [module.proj_size or module.hidden_size, module.hidden_size] if kind == "LSTM" else [module.hidden_size]
    if hx is None:
        return tuple(torch.zeros(batch, size, dtype=torch.float64) for size in sizes)
    return tuple(h.to(torch.float64)[index] if h.dim() == 3 else h.to(torch.float64) for h in hx)


def _cell_layer(path: str, module: nn.RNNCellBase, calls: list, seed: int) -> LayerDiagnosis:
    kind = _recurrence(module)
    w = _weights(module, "")
    steps, inputs, states = [], [], []
    for args, kwargs in calls:
        x = (args[0] if args else kwargs["input"]).to(torch.float64)
        x = x if x.dim() == 2 else x[None]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if hx is None:
            state = (torch.zeros(x.shape[0], module.hidden_size, dtype=torch.float64),) * (2 if kind == "LSTM" else 1)
        else:
            state = tuple(h.to(torch.float64).reshape(x.shape[0], -1) for h in (hx if kind == "LSTM" else (hx,)))
        steps.append(_step(kind, x, state, w, kind == "RNN (ReLU)"))
        inputs.append(x)
        states.append((state, _tolerance(hx)))
    merged = {k: torch.stack([s[k] for s in steps]) for k in steps[0]}
    label = type(module).__name__ + (" (ReLU)" if kind == "RNN (ReLU)" else "")
    diagnosis = LayerDiagnosis(path, label, hidden_size=int(module.hidden_size))
    _fill(diagnosis, merged, torch.ones(merged["h"].shape[:2], dtype=torch.bool), w["weight_hh"], kind)
    if kind == "LSTM":
        if _chained(steps, states):
            x = torch.stack(inputs)
            _share(diagnosis, path_flows(x, states[0][0], w, torch.ones(x.shape[:2], dtype=torch.bool), seed))
        else:
            diagnosis.add_note(
                "cell and hidden path shares not measured: the cell's calls do not form one chain (each call given "
                "the state the previous call returned)"
            )
    return diagnosis


def _tolerance(hx: Any) -> float:
    """How far a recorded state may be from the float64 replay of the step that made it: the state's rounding."""
    first = hx[0] if isinstance(hx, (tuple, list)) else hx
    return 0.0 if first is None else 64 * torch.finfo(first.dtype).eps


def _chained(steps: list[dict[str, torch.Tensor]], states: list[tuple[tuple[torch.Tensor, ...], float]]) -> bool:
    """Whether each call was given (h, c) as the previous call returned it, up to the recorded state's rounding."""
    for before, (state, tol) in zip(steps, states[1:], strict=False):
        for made, given in zip((before["h"], before["c"]), state, strict=True):
            if made.shape != given.shape or not torch.allclose(made, given, rtol=tol, atol=tol):
                return False
    return True


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


# -- the paths of an LSTM's gradient ----------------------------------------------------------------------


def path_flows(
    x: torch.Tensor, state: tuple[torch.Tensor, ...], w: dict, mask: torch.Tensor, seed: int
) -> torch.Tensor:
    """How the gradient that reaches an LSTM layer's first input crossed each step: [cell, cell + hidden] summed
    over the step boundaries 1 .. steps-1.

    The loss is the layer's own, L = sum over the batch of <v, h_last> (v a unit vector drawn from `seed`), its inputs
    `x` (steps, batch, features, in the order the layer reads them) held fixed. G = dL/dx_0. After step t-1 the rest of
    the run depends on the past only through (c_{t-1}, h_{t-1}), so the change of L when x_0 moves along G,
    ||G||^2, splits exactly at every boundary t into <dL/dc_{t-1} through c_t = f_t c_{t-1} + ..., dc_{t-1}> (the
    cell path) and <dL/dh_{t-1} through step t's gates, dh_{t-1}> (the hidden path), dc and dh the tangents along G
    (forward mode). Each boundary's two parts sum to ||G||^2; so do the sums over boundaries, to (steps-1) ||G||^2.
    A sample of a padded batch counts the boundaries before its real steps only (`mask`), not those its state is
    merely carried across.
    """
    if x.shape[0] < 2:
        return torch.zeros(2, dtype=torch.float64)
    x = x.detach().requires_grad_(True)
    v = torch.randn(state[0].shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.enable_grad():
        entering, last = _unroll(x, state, w, mask)
        grads = torch.autograd.grad((last @ (v / v.norm())).sum(), [x, *entering])
    along = torch.zeros_like(x)
    along[0] = grads[0][0]
    with torch.no_grad(), forward_ad.dual_level():
        entering, _ = _unroll(forward_ad.make_dual(x, along), state, w, mask)
        tangents = [forward_ad.unpack_dual(s).tangent for s in entering]
    parts = torch.stack([(g * t).sum(dim=-1) for g, t in zip(grads[1:], tangents, strict=True)])
    hidden, cell = (parts.reshape(x.shape[0] - 1, 2, -1) * mask[1:, None]).sum(dim=(0, 2))
    return torch.stack([cell, cell + hidden])


def _unroll(
    x: torch.Tensor, state: tuple[torch.Tensor, ...], w: dict, mask: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """An LSTM run over `x`: h and c as each step after the first receives them (alternating; copies that step alone
    reads), and the last h. Past a sample's end its state stays, as in `_replay`."""
    h, c = state
    entering = []
    for t in range(x.shape[0]):
        if t:
            h, c = h.clone(), c.clone()
            entering += [h, c]
        result = _step("LSTM", x[t], (h, c), w, False)
        real = mask[t][:, None]
        h, c = torch.where(real, result["h"], h), torch.where(real, result["c"], c)
    return entering, h


def _share(diagnosis: LayerDiagnosis, flows: torch.Tensor) -> None:
    cell, total = (float(f) for f in flows)
    if total > 0 and math.isfinite(total):
        diagnosis.cell_share = cell / total
    else:
        diagnosis.add_note(
            "cell and hidden path shares not measured: no gradient reaches the layer's first input in float64"
        )


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
    profile = measure(changed, options)
    profile.name = f"{profile.name} [{change}]"
    return WhatIf(change, profile)
