"""`GradientProfile`: the measured gradient-norm profile of one probe, as plain data with its metrics."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_gradhealth.errors import InvalidArgumentError, ReportFormatError
from pytest_gradhealth.intervals import Interval, median_interval

SCHEMA_VERSION = 1
_MAX_LOG = math.log(sys.float_info.max)
_LN10 = math.log(10.0)

TRANSIENT_RISE = 2.0  # `transient`: step 0 at least this many times the minimum (default RNN/LSTM/GRU read 1.0)

_FLOAT_ENCODING = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_floats(values: np.ndarray) -> list:
    """Floats as JSON-safe nested lists: non-finite values become the strings NaN, Infinity, -Infinity."""
    values = np.asarray(values, dtype=np.float64)
    if np.isfinite(values).all():
        return values.tolist()  # one C call: the plugin encodes every probe of every test
    encoded = values.astype(object)
    encoded[np.isnan(values)] = "NaN"
    encoded[values == math.inf] = "Infinity"
    encoded[values == -math.inf] = "-Infinity"
    return encoded.tolist()


def decode_floats(values: Any, what: str) -> np.ndarray:
    """The inverse of `encode_floats`, with an error naming `what` when the data is not numbers."""

    def one(x: Any) -> Any:
        if isinstance(x, list):
            return [one(v) for v in x]
        if isinstance(x, str) and x in _FLOAT_ENCODING:
            return _FLOAT_ENCODING[x]
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
        raise ReportFormatError(f"{what}: expected numbers (or 'NaN'/'Infinity'/'-Infinity'), got {x!r}")

    return np.asarray(one(values), dtype=np.float64)


def log10_rms(log10_samples: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """log10 of the RMS, over the `valid` samples, of norms given as log10 (batch, steps): exact however far outside
    float64's range the norms lie; -inf where every norm is zero, NaN or inf where a valid one is."""
    with np.errstate(invalid="ignore", divide="ignore"):  # columns that are not scalable keep `largest`
        largest = np.where(valid, log10_samples, -np.inf).max(axis=0)
        scalable = np.isfinite(largest)
        shifted = np.where(valid & scalable, log10_samples - np.where(scalable, largest, 0.0), -np.inf)
        mean_square = (10.0 ** (2.0 * shifted)).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
        return np.where(scalable, largest + 0.5 * np.log10(mean_square), largest)


def _log(log: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """`log` of `values`: -inf at zeros, NaN at NaN, without numpy's warnings (and without the cost of silencing them
    where every value is positive)."""
    if values.size and values.min() > 0.0:
        return log(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        return log(values)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y against x."""
    x_c = x - x.mean()
    return float((x_c * (y - y.mean())).sum() / (x_c * x_c).sum())


@dataclass(eq=False)
class GradientProfile:
    """How much gradient of a loss on the last output reaches each timestep.

    `norms[i]` is sqrt(mean over the batch of ||g_t||^2) for t = `steps[i]`, g_t the gradient of the loss at what
    `measure` names: the input x_t ("input"), the hidden state h_t ("hidden") or the cell state c_t ("cell"). In a
    padded batch (`lengths=`) the samples are aligned by their lag from each one's last real step, and the mean is
    over the samples that reach that lag. `steps` is every timestep 0 (earliest) .. seq_len-1 (latest) unless only
    some were measured.
    """

    norms: np.ndarray
    sample_norms: np.ndarray
    seq_len: int
    steps: np.ndarray = None  # type: ignore[assignment]  # None: every timestep 0 .. seq_len-1
    name: str = ""
    model: str = ""
    batch_size: int = 0
    seed: int | None = None
    dtype: str = ""
    device: str = ""
    measure: str = "input"
    mode: str = "eval"
    inputs: str = "float"
    layer: int | None = None
    input_size: int | None = None
    hidden_size: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    contributions: dict[str, np.ndarray] | None = None
    # Diagnosis read from the model and the gradients by the probe (None in profiles saved before it existed):
    subnormal_steps: np.ndarray | None = None  # timesteps where some gradient entry is subnormal in `dtype`
    zeros: str | None = None  # why some steps get exactly zero: "underflow", or "structural" (no path reaches them)
    advice: str | None = None  # what to change when the gradient vanishes, from the modules the model contains
    warmup: int = 0  # steps the model ran before the measured window (0 in profiles saved before it existed)
    # seeds=N: the N draws' own profiles; this one pools their samples, and its metrics are medians over them
    seeds: int | None = None
    seed_profiles: list[GradientProfile] | None = None
    # log10 of each sample's norm where the probe renormalised its backward pass because the plain one underflowed
    # (or overflowed): exact beyond float64's range, where `sample_norms` reads 0. None: log10 of `sample_norms`.
    log10_sample_norms: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.norms = np.asarray(self.norms, dtype=np.float64)
        self.sample_norms = np.asarray(self.sample_norms, dtype=np.float64)
        if self.steps is None:
            self.steps = np.arange(self.seq_len, dtype=np.int64)
        self.steps = np.asarray(self.steps, dtype=np.int64)
        if self.norms.ndim != 1 or self.norms.shape != self.steps.shape:
            raise ReportFormatError(
                f"norms must be 1-D and aligned with steps: norms has shape {self.norms.shape}, "
                f"steps has shape {self.steps.shape}"
            )
        if self.sample_norms.ndim != 2 or self.sample_norms.shape[1] != len(self.norms):
            raise ReportFormatError(
                f"sample_norms must have shape (batch, {len(self.norms)}), got {self.sample_norms.shape}"
            )
        if self.log10_sample_norms is None:
            self._log10_norms = _log(np.log10, self.norms)
        else:
            self.log10_sample_norms = np.asarray(self.log10_sample_norms, dtype=np.float64)
            if self.log10_sample_norms.shape != self.sample_norms.shape:
                raise ReportFormatError(
                    f"log10_sample_norms must have the shape of sample_norms {self.sample_norms.shape}, "
                    f"got {self.log10_sample_norms.shape}"
                )
            logs = self.log10_sample_norms
            self._log10_norms = np.where(np.isnan(self.norms), np.nan, log10_rms(logs, ~np.isnan(logs)))

    @functools.cached_property
    def _ln_norms(self) -> np.ndarray:
        """ln of each step's norm (from the log-domain figures where the probe renormalised)."""
        if self.log10_sample_norms is None:
            return _log(np.log, self.norms)
        return self._log10_norms * _LN10

    @functools.cached_property
    def _ln_samples(self) -> np.ndarray:
        """ln of each sample's norm at each step (from the log-domain figures where the probe renormalised)."""
        if self.log10_sample_norms is None:
            return _log(np.log, self.sample_norms)
        return self.log10_sample_norms * _LN10

    # -- metrics -------------------------------------------------------------------------------------

    @property
    def lags(self) -> np.ndarray:
        """Steps between each measured timestep and the last one: seq_len - 1 - t."""
        return self.seq_len - 1 - self.steps

    @property
    def log10_norms(self) -> np.ndarray:
        """log10 of each step's norm, float64: finite wherever some gradient reaches the step, however far below (or
        above) float64's range (the probe renormalises its backward pass where the plain one leaves the dtype's
        range); -inf where none does, NaN/inf where the gradient is not finite."""
        return self._log10_norms

    @property
    def nonfinite_steps(self) -> np.ndarray:
        """Timesteps whose gradient norm is NaN or infinite."""
        return self.steps[np.isnan(self._log10_norms) | (self._log10_norms == math.inf)]

    @property
    def underflow_steps(self) -> np.ndarray:
        """Timesteps whose gradient is exactly zero (in the log-domain profile: no gradient at all reaches them)."""
        return self.steps[self._log10_norms == -math.inf]

    @property
    def finite(self) -> bool:
        """True when every measured norm is a finite number (or zero)."""
        return self.nonfinite_steps.size == 0

    def _median(self, metric: Callable[[GradientProfile], float]) -> float | None:
        """The median of `metric` over the per-seed profiles, None for a single draw."""
        if not self.seed_profiles:
            return None
        return float(np.median([metric(p) for p in self.seed_profiles]))

    def interval(self, metric: str, level: float = 0.95, log10: bool = False) -> Interval:
        """A confidence interval for the median of `metric` (a name in `metrics.METRICS`, e.g. "rate") over the
        seeds (see `intervals.median_interval`); a single draw gives the degenerate interval of its one value.
        `log10=True` gives it in log10 for a metric that has a log10 form ("ratio"), exact beyond float64's range,
        where the ratio itself reads 0."""
        from pytest_gradhealth.metrics import METRICS

        if metric not in METRICS:
            raise InvalidArgumentError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        of = METRICS[metric].log10 if log10 else METRICS[metric].value
        if of is None:
            having = [name for name, m in METRICS.items() if m.log10 is not None]
            raise InvalidArgumentError(
                f"log10=True needs a metric with a log10 form ({', '.join(having)}), got {metric!r}; "
                f"pass log10=False for {metric!r}"
            )
        profiles = self.seed_profiles or [self]
        return median_interval([of(p) for p in profiles], level)

    @property
    def ratio(self) -> float:
        """norms[0] / norms[-1]: the share of the latest step's gradient that reaches the earliest step.

        NaN when either end is not finite: a non-finite gradient is never shown as a ratio; 0.0 below float64's
        range (`log10_ratio` holds it). With seeds, the median.
        """
        if (median := self._median(lambda p: p.ratio)) is not None:
            return median
        first, last = float(self.norms[0]), float(self.norms[-1])
        normal = sys.float_info.min
        if self.log10_sample_norms is None or (normal <= first < math.inf and normal <= last < math.inf):
            if not (math.isfinite(first) and math.isfinite(last)) or last == 0.0:
                return math.nan
            return first / last
        return 10.0**self.log10_ratio

    @property
    def log10_ratio(self) -> float:
        """log10 of `ratio`, exact beyond float64's range: -5000 is a decay to 1e-5000 over the sequence; -inf when
        no gradient reaches the earliest step, NaN when either end is not finite. With seeds, the median."""
        if (median := self._median(lambda p: p.log10_ratio)) is not None:
            return median
        first, last = float(self._log10_norms[0]), float(self._log10_norms[-1])
        if not math.isfinite(last) or math.isnan(first) or first == math.inf:
            return math.nan
        return first - last

    @property
    def rate(self) -> float:
        """Per-step factor: exp of the least-squares slope of ln(norm) against the lag, over the finite positive
        norms. Exactly `a` for h_t = a*h_{t-1} + x_t; NaN with fewer than two usable points. With seeds, the median."""
        if (median := self._median(lambda p: p.rate)) is not None:
            return median
        ok = np.isfinite(self._ln_norms)
        if ok.sum() < 2:
            return math.nan
        slope = _slope(self.lags[ok].astype(np.float64), self._ln_norms[ok])
        return math.exp(slope) if slope < _MAX_LOG else math.inf

    @property
    def lyapunov(self) -> float:
        """Per-step log factor of the stationary backward dynamics (negative: vanishing): the least-squares slope,
        against the lag, of the batch mean of ln(sample norm), over the lags from seq_len // 4 on.

        The first quarter of lags is left out: there the backward signal turns from the loss's direction onto the
        dynamics' leading one. Without a warm-up the last quarter is left out too, where the start from a zero state
        bends the profile; probe with `warmup=` for the stationary figure. A mean of logs, not the log of the RMS,
        so it estimates the largest Lyapunov exponent of the backward Jacobian products, not a moment of them.
        NaN with fewer than two steps in that part where every sample's norm is finite and positive: `checkpoints=2`
        measures only lags 0 and seq_len - 1, and lag 0 is in the first quarter. With seeds, the median (NaN when a
        seed's is).
        """
        if (median := self._median(lambda p: p.lyapunov)) is not None:
            return median
        lags = self.lags
        n = self.seq_len
        part = (lags >= n // 4) & ((lags <= n - 1 - n // 4) if self.warmup == 0 else True)
        logs = self._ln_samples
        measured = ~np.isnan(self.sample_norms)  # NaN: a padded sample that does not reach this lag
        usable = part & measured.any(axis=0) & np.all(~measured | np.isfinite(logs), axis=0)
        if usable.sum() < 2:
            return math.nan
        mean_log = np.nanmean(logs[:, usable], axis=0)
        return _slope(lags[usable].astype(np.float64), mean_log)

    @property
    def transient(self) -> bool:
        """Whether the profile is U-shaped by a start-up transient: no warm-up, and the earliest step's norm at least
        `TRANSIENT_RISE` times the smallest later one. Every probe starts from a zero state, and the gradient that
        reaches the first steps can rise again above the stationary decay (an LSTM with forget-gate bias 3 at 100
        steps: 2.1x); `ratio`, `rate` and `half_life` then mix the start-up in. `warmup=` measures past it."""
        logs = self._log10_norms
        later = logs[1:][np.isfinite(logs[1:])]
        return self.warmup == 0 and later.size > 0 and bool(logs[0] - later.min() >= math.log10(TRANSIENT_RISE))

    @property
    def half_life(self) -> float:
        """Steps for the gradient to halve at `rate`: ln 2 / -ln(rate); infinite when rate >= 1. With seeds, the
        median."""
        if (median := self._median(lambda p: p.half_life)) is not None:
            return median
        rate = self.rate
        if math.isnan(rate):
            return math.nan
        if rate >= 1.0:
            return math.inf
        if rate == 0.0:
            return 0.0
        return math.log(2.0) / -math.log(rate)

    def horizon(self, threshold: float = 0.01) -> int:
        """How many steps back the gradient stays at or above threshold * norms[-1].

        seq_len - 1 when it never falls below. A NaN norm counts as falling below. With seeds, the median
        (rounded down).
        """
        if not (isinstance(threshold, (int, float)) and 0 < threshold and math.isfinite(threshold)):
            raise InvalidArgumentError(f"threshold must be a positive finite number, got {threshold!r}")
        if (median := self._median(lambda p: p.horizon(threshold))) is not None:
            return int(median)
        lags = self.lags
        for i in range(len(self.norms) - 1, -1, -1):
            if not self._reaches(i, threshold):
                return int(lags[i + 1]) if i + 1 < len(self.norms) else 0
        return self.seq_len - 1

    def first_step_below(self, bound_ratio: float) -> int | None:
        """The latest timestep (nearest the loss) whose norm is below bound_ratio * norms[-1], or None."""
        for i in range(len(self.norms) - 1, -1, -1):
            if not self._reaches(i, bound_ratio):
                return int(self.steps[i])
        return None

    def _reaches(self, i: int, fraction: float) -> bool:
        """Whether norms[i] >= fraction * norms[-1] (False for NaN), in the log domain where the probe renormalised."""
        if self.log10_sample_norms is None:
            return bool(self.norms[i] >= fraction * float(self.norms[-1]))
        return bool(self._log10_norms[i] >= math.log10(fraction) + self._log10_norms[-1])

    # -- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (strict JSON: non-finite floats are strings); `from_dict` restores it exactly."""
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "model": self.model,
            "seq_len": int(self.seq_len),
            "batch_size": int(self.batch_size),
            "seed": None if self.seed is None else int(self.seed),
            "dtype": self.dtype,
            "device": self.device,
            "measure": self.measure,
            "mode": self.mode,
            "inputs": self.inputs,
            "layer": None if self.layer is None else int(self.layer),
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "versions": {str(k): str(v) for k, v in self.versions.items()},
            "steps": [int(s) for s in self.steps],
            "norms": encode_floats(self.norms),
            "sample_norms": encode_floats(self.sample_norms),
            "contributions": None
            if self.contributions is None
            else {k: encode_floats(v) for k, v in self.contributions.items()},
            "subnormal_steps": None if self.subnormal_steps is None else [int(s) for s in self.subnormal_steps],
            "zeros": self.zeros,
            "advice": self.advice,
            "warmup": int(self.warmup),
            "seeds": self.seeds,
            "seed_profiles": None if self.seed_profiles is None else [p.to_dict() for p in self.seed_profiles],
        }
        if self.log10_sample_norms is not None:
            data["log10_sample_norms"] = encode_floats(self.log10_sample_norms)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GradientProfile:
        """Rebuild a profile from `to_dict` output; a clear `ReportFormatError` when the data is not one."""
        if not isinstance(data, Mapping):
            raise ReportFormatError(f"a gradient profile must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise ReportFormatError(
                f"gradient profile schema {schema!r} is not supported; this version reads schema {SCHEMA_VERSION}"
            )
        missing = [k for k in ("seq_len", "steps", "norms", "sample_norms") if k not in data]
        if missing:
            raise ReportFormatError(f"gradient profile is missing {', '.join(missing)}")
        seq_len = data["seq_len"]
        if not isinstance(seq_len, int) or isinstance(seq_len, bool):
            raise ReportFormatError(f"seq_len must be an integer, got {seq_len!r}")
        contributions = data.get("contributions")
        if contributions is not None and not isinstance(contributions, Mapping):
            raise ReportFormatError("contributions must be an object of weight name -> array")
        try:
            steps = np.asarray(data["steps"], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise ReportFormatError(f"steps must be a list of integers: {exc}") from exc
        return cls(
            norms=decode_floats(data["norms"], "norms"),
            sample_norms=decode_floats(data["sample_norms"], "sample_norms"),
            seq_len=seq_len,
            steps=steps,
            name=str(data.get("name", "")),
            model=str(data.get("model", "")),
            batch_size=int(data.get("batch_size", 0)),
            seed=data.get("seed"),
            dtype=str(data.get("dtype", "")),
            device=str(data.get("device", "")),
            measure=str(data.get("measure", "input")),
            mode=str(data.get("mode", "eval")),
            inputs=str(data.get("inputs", "float")),
            layer=data.get("layer"),
            input_size=data.get("input_size"),
            hidden_size=data.get("hidden_size"),
            versions={str(k): str(v) for k, v in dict(data.get("versions") or {}).items()},
            contributions=None
            if contributions is None
            else {str(k): decode_floats(v, f"contributions[{k}]") for k, v in contributions.items()},
            subnormal_steps=None
            if data.get("subnormal_steps") is None
            else np.asarray(data["subnormal_steps"], dtype=np.int64),
            zeros=data.get("zeros"),
            advice=data.get("advice"),
            warmup=int(data.get("warmup") or 0),  # null: saved before warm-ups existed
            seeds=data.get("seeds"),
            seed_profiles=None
            if data.get("seed_profiles") is None
            else [cls.from_dict(p) for p in data["seed_profiles"]],
            log10_sample_norms=None
            if data.get("log10_sample_norms") is None
            else decode_floats(data["log10_sample_norms"], "log10_sample_norms"),
        )

    def __repr__(self) -> str:
        return (
            f"GradientProfile(name={self.name!r}, model={self.model!r}, measure={self.measure!r}, "
            f"seq_len={self.seq_len}, ratio={self.ratio:.3g}, rate={self.rate:.4g}, "
            f"half_life={self.half_life:.3g}, horizon={self.horizon()})"
        )
