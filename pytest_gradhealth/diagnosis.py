"""`Diagnosis`: why a recurrent model's gradient vanishes and what would change it, as plain data (numpy only).

Measured by `pytest_gradhealth.diagnose` (module `diagnosing`); read, rendered and round-tripped through JSON here
without torch, like `GradientProfile`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_gradhealth.errors import ReportFormatError
from pytest_gradhealth.metrics import log10_number
from pytest_gradhealth.profile import GradientProfile, decode_floats, encode_floats

# What a gate's value means for memory: the gate whose product along the path carries the gradient back.
MEMORY_GATES = {"LSTM": "forget", "GRU": "update"}
SATURATED = 0.95  # |tanh| above this: the unit passes back at most 1 - 0.95^2 ~ 10% of its gradient
GATE_CLOSED, GATE_OPEN = 0.05, 0.95


@dataclass
class GateStats:
    """One gate over every unit, step and sample of the probe's trajectory."""

    mean: float
    closed: float  # fraction of values below GATE_CLOSED
    open: float  # fraction of values above GATE_OPEN

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _number(self.mean), "closed": _number(self.closed), "open": _number(self.open)}


@dataclass
class LayerDiagnosis:
    """One recurrent layer (one direction of one layer of an nn.RNN/LSTM/GRU, or a cell called once per step).

    Gated layers: `gates` by name (LSTM forget, input, output; GRU update, reset) and `timescales`, each unit's memory
    timescale tau_u = -1 / ln(mean memory gate of unit u) in steps: the forget gate of an LSTM (c_t = f_t c_{t-1} +
    ...), the update gate of a GRU (h_t = z_t h_{t-1} + (1 - z_t) n_t). Vanilla RNNs: `saturated` (tanh) or `dead`
    (ReLU) units, the spectral radius and norm of W_hh, and `mean_field_factor`, the per-step gradient factor
    sqrt(mean ||W_hh^T D_t u||^2) for a random unit u, D_t the activation's derivatives (sqrt(chi_1) in mean-field
    theory). LSTMs: `cell_share`, the share of the gradient reaching the layer's first input that crosses each step
    through the cell state c_{t-1} -> c_t (forget gate) rather than through h_{t-1} -> the gates (weight_hh), mean over
    the steps (exact split; see `diagnosing.path_flows`). `note` says what could not be measured, and why.
    """

    path: str
    kind: str
    layer: int = 0
    direction: str = "forward"
    hidden_size: int = 0
    gates: dict[str, GateStats] = field(default_factory=dict)
    timescales: np.ndarray | None = None
    saturated: float | None = None
    dead: float | None = None
    spectral_radius: float | None = None
    spectral_norm: float | None = None
    mean_field_factor: float | None = None
    cell_share: float | None = None
    note: str = ""

    def add_note(self, note: str) -> None:
        self.note = f"{self.note}; {note}" if self.note else note

    @property
    def label(self) -> str:
        where = self.path or "model"
        layer = f" layer {self.layer}" if self.kind in ("LSTM", "GRU", "RNN", "RNN (ReLU)") else ""
        return f"{where} ({self.kind}{layer}{', reverse' if self.direction == 'reverse' else ''})"

    def reaching(self, seq_len: int) -> int:
        """How many units have a memory timescale of at least `seq_len` steps."""
        return 0 if self.timescales is None else int((self.timescales >= seq_len).sum())

    def lines(self, seq_len: int) -> list[str]:
        """A few lines a person reads: what holds the gradient back in this layer."""
        out = [f"{self.label}, hidden {self.hidden_size}"]
        for name, stats in self.gates.items():
            out.append(
                f"  {name} gate: mean {stats.mean:.3f}, {stats.closed:.0%} below {GATE_CLOSED}, "
                f"{stats.open:.0%} above {GATE_OPEN}"
            )
        if self.timescales is not None and len(self.timescales):
            tau = self.timescales
            out.append(
                f"  memory timescales (steps): median {np.median(tau):.3g}, max {tau.max():.3g}; "
                f"{self.reaching(seq_len)} of {len(tau)} units reach seq_len {seq_len}"
            )
        if self.cell_share is not None:
            out.append(
                f"  gradient crossing each step: {self.cell_share:.1%} through the cell state, "
                f"{1 - self.cell_share:.1%} through the hidden state"
            )
        if self.saturated is not None:
            out.append(f"  saturated units (|h| > {SATURATED}): {self.saturated:.0%}")
        if self.dead is not None:
            out.append(f"  dead units (never positive): {self.dead:.0%}")
        if self.spectral_radius is not None:
            out.append(
                f"  weight_hh: spectral radius {self.spectral_radius:.3g}, norm {self.spectral_norm:.3g}; "
                f"mean-field factor per step {self.mean_field_factor:.3g}"
            )
        if self.note:
            out.append(f"  {self.note}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "layer": self.layer,
            "direction": self.direction,
            "hidden_size": self.hidden_size,
            "gates": {name: stats.to_dict() for name, stats in self.gates.items()},
            "timescales": None if self.timescales is None else encode_floats(self.timescales),
            **{name: _number(getattr(self, name)) for name in _OPTIONAL_NUMBERS},
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerDiagnosis:
        _require(data, ("path", "kind", "layer", "direction", "hidden_size", "gates", "timescales", "note"), "layer")
        gates = data["gates"]
        if not isinstance(gates, Mapping):
            raise ReportFormatError(f"diagnosis layer gates must be an object, got {type(gates).__name__}")
        numbers = {name: _read_number(data.get(name), f"diagnosis layer {name}") for name in _OPTIONAL_NUMBERS}
        timescales = data["timescales"]
        return cls(
            path=str(data["path"]),
            kind=str(data["kind"]),
            layer=_read_int(data["layer"], "diagnosis layer"),
            direction=str(data["direction"]),
            hidden_size=_read_int(data["hidden_size"], "diagnosis hidden_size"),
            gates={str(name): _gate_stats(stats, str(name)) for name, stats in gates.items()},
            timescales=None if timescales is None else decode_floats(timescales, "diagnosis timescales"),
            note=str(data["note"]),
            **numbers,
        )


_OPTIONAL_NUMBERS = ("saturated", "dead", "spectral_radius", "spectral_norm", "mean_field_factor", "cell_share")


@dataclass
class WhatIf:
    """A standard remedy applied to a copy of the model, and the profile the copy measured with the same probe."""

    change: str
    profile: GradientProfile

    def effect(self, before: GradientProfile) -> str:
        """'forget bias +2: horizon 8 -> 96, rate 0.62 -> 0.96, ratio 1e-20 -> 0.003'."""
        pairs = (
            ("horizon", f"{before.horizon():d}", f"{self.profile.horizon():d}"),
            ("rate", f"{before.rate:.3f}", f"{self.profile.rate:.3f}"),
            ("ratio", log10_number(before.log10_ratio, 2), log10_number(self.profile.log10_ratio, 2)),
        )
        return f"{self.change}: " + ", ".join(f"{name} {old} -> {new}" for name, old, new in pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change, "profile": self.profile.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WhatIf:
        _require(data, ("change", "profile"), "what-if")
        return cls(str(data["change"]), GradientProfile.from_dict(data["profile"]))


@dataclass
class Diagnosis:
    """Per recurrent layer, what its gates and weights do to the gradient, and the measured effect of remedies."""

    profile: GradientProfile
    layers: list[LayerDiagnosis]
    what_ifs: list[WhatIf] = field(default_factory=list)
    note: str = ""

    def fix(self, passes: Callable[[GradientProfile], bool]) -> WhatIf | None:
        """The first remedy, least intrusive first, whose copy of the model `passes`; None when none does."""
        return next((w for w in self.what_ifs if passes(w.profile)), None)

    def lines(self) -> list[str]:
        """The diagnosis as text: the probe, each layer, each remedy's effect."""
        p = self.profile
        out = [
            f"{p.name or p.model}: seq_len {p.seq_len}, ratio {p.ratio:.3g}, rate {p.rate:.4g}, "
            f"horizon {p.horizon()} (measure={p.measure})"
        ]
        for layer in self.layers:
            out += layer.lines(p.seq_len)
        if self.note:
            out.append(self.note)
        if self.what_ifs:
            out.append("measured remedies (applied to copies of the model, probed the same way):")
            out += [f"  {w.effect(p)}" for w in self.what_ifs]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "what_ifs": [w.to_dict() for w in self.what_ifs],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnosis:
        """Rebuild from `to_dict` output; a `ReportFormatError` naming the field when the data is not one."""
        _require(data, ("profile", "layers", "what_ifs", "note"), "diagnosis")
        for name in ("layers", "what_ifs"):
            if not isinstance(data[name], list):
                raise ReportFormatError(f"diagnosis {name} must be a list, got {type(data[name]).__name__}")
        return cls(
            profile=GradientProfile.from_dict(data["profile"]),
            layers=[LayerDiagnosis.from_dict(layer) for layer in data["layers"]],
            what_ifs=[WhatIf.from_dict(w) for w in data["what_ifs"]],
            note=str(data["note"]),
        )


def _number(value: float | None) -> float | str | None:
    if value is None:
        return None
    return encode_floats(np.asarray(float(value)))  # type: ignore[return-value]


def _read_number(value: Any, what: str) -> float | None:
    return None if value is None else float(decode_floats(value, what))


def _read_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReportFormatError(f"{what} must be an integer, got {value!r}")
    return value


def _gate_stats(data: Any, name: str) -> GateStats:
    _require(data, ("mean", "closed", "open"), f"{name} gate")
    values = {key: _read_number(data[key], f"{name} gate {key}") for key in ("mean", "closed", "open")}
    if any(v is None or math.isnan(v) for v in values.values()):
        raise ReportFormatError(f"{name} gate statistics must be numbers, got {dict(data)!r}")
    return GateStats(**values)  # type: ignore[arg-type]


def _require(data: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ReportFormatError(f"a {what} must be a JSON object, got {type(data).__name__}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise ReportFormatError(f"a {what} is missing {', '.join(missing)}")
