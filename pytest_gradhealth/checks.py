"""Checks: the thresholds an assertion applies to a profile, as objects.

A check knows its thresholds (validated when it is made, before any probe runs), its verdict on a profile, the
lines that explain a failure, and the bounds a plot draws. `CHECKS` lists them by assertion name, so a saved
record's check (`{"assertion": ..., "thresholds": ...}`) turns back into its object. A new check is one class here
and one `assert_*` line in `assertions.py`. Pure Python over the profile: no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_gradhealth.errors import InvalidArgumentError, InvalidArgumentTypeError
from pytest_gradhealth.metrics import METRICS, log10_number
from pytest_gradhealth.verdicts import failure_message, finite, interval_lines, log10_peak, settle

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile


@dataclass(frozen=True)
class Bound:
    """A line a plot draws for a check: `axis` "y" at `value` times the last step's norm, or "x" at timestep
    `value`."""

    axis: str
    value: float
    name: str  # part of the plotted artist's id: bound-<name>-<i>
    style: str  # matplotlib line style
    label: str


def threshold(label: str, value: Any, lower: float = 0.0, upper: float | None = None) -> float:
    """`value` when it is a finite number above `lower` (and at most `upper`); otherwise an error naming `label`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{label} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= lower or (upper is not None and value > upper):
        bounds = f"> {lower:g}" + (f" and <= {upper:g}" if upper is not None else "")
        raise InvalidArgumentError(f"{label} must be a finite number {bounds}, got {value!r}")
    return value


@dataclass(frozen=True)
class Scale:
    """How a check judges per-seed figures with seeds=N: `value` of each seed's profile against `bound`, failing where
    `fails` holds (monotone), shown by `show`; `figure` and `label` name the figure and the threshold in messages."""

    figure: str
    value: Callable[[GradientProfile], float]
    bound: float
    fails: Callable[[float], bool]
    show: Callable[[float], str]
    label: str


@dataclass(frozen=True)
class Check:
    """The base of every check: its verdict is non-finite whenever a gradient is NaN/Inf, else `_verdict`'s; with
    seeds=N, the verdict on the interval of the per-seed figures (`scale`): `failing` when the whole interval fails,
    ok when it all passes, "uncertain" when it straddles the threshold."""

    assertion: ClassVar[str]
    failing: ClassVar[str] = "ok"  # the verdict when the figure fails its threshold
    floor: ClassVar[str | None] = None  # the threshold below which the profile counts as vanished
    limits: ClassVar[dict[str, dict[str, float]]] = {}  # threshold -> the bounds `threshold()` checks it against
    line: ClassVar[tuple[str, str, str] | None] = None  # a plot's bound: (threshold, line style, words for its value)

    def __post_init__(self) -> None:
        for name, bounds in self.limits.items():
            threshold(name, getattr(self, name), **bounds)

    def fits(self, seq_len: int) -> None:
        """Raise `InvalidArgumentError` when the check can never pass at `seq_len`."""

    def verdict(self, profile: GradientProfile) -> str:
        if not finite(profile):
            return "non-finite"
        scale = self.scale()
        if not profile.seed_profiles or scale is None:
            return self._verdict(profile)
        outcome, _ = settle([scale.value(p) for p in profile.seed_profiles], scale.fails)
        return {"fail": self.failing, "ok": "ok"}.get(outcome, "uncertain")

    def _verdict(self, profile: GradientProfile) -> str:
        return "ok"

    def scale(self) -> Scale | None:
        """What seeds=N judge; None when the check has no threshold (a NaN in any seed fails it)."""
        return None

    def _interval_lines(self, profile: GradientProfile) -> list[str]:
        """With seeds=N: the interval of the judged figure against the threshold, for a failure message."""
        scale = self.scale()
        if not profile.seed_profiles or scale is None:
            return []
        outcome, interval = settle([scale.value(p) for p in profile.seed_profiles], scale.fails)
        return interval_lines(outcome, scale.figure, interval, scale.bound, scale.label, scale.show)

    def explain(self, profile: GradientProfile) -> list[str]:
        """The figure against its bound, for a failure message."""
        return []

    def bounds(self, profile: GradientProfile) -> list[Bound]:
        """The lines a plot of `profile` draws for this check: by default `line`, a multiple of the last step."""
        if self.line is None:
            return []
        name, style, words = self.line
        value = getattr(self, name)
        return [Bound("y", value, name, style, f"{self.assertion}: {words.format(value)}")]

    def thresholds(self) -> dict[str, Any]:
        # plain Python types only: the record travels to the xdist controller, which cannot take numpy scalars
        return {k: float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    def record(self, profile: GradientProfile, advice: Callable[[str], list[str]]) -> dict[str, Any]:
        """The check record: plain data for the report, and the failure message when the verdict is not ok, closed
        by `advice(verdict)`'s lines."""
        verdict = self.verdict(profile)
        result: dict[str, Any] = {"assertion": self.assertion, "verdict": verdict, "thresholds": self.thresholds()}
        if verdict != "ok":
            floor = None if self.floor is None else float(getattr(self, self.floor))
            explanation = self.explain(profile) + self._interval_lines(profile)
            result["message"] = failure_message(self.assertion, verdict, profile, explanation, floor, advice(verdict))
        return result


@dataclass(frozen=True)
class NoVanishing(Check):
    """The earliest step keeps at least `min_ratio` of the last step's gradient."""

    assertion: ClassVar[str] = "assert_no_vanishing"
    failing: ClassVar[str] = "vanishing"
    floor: ClassVar[str | None] = "min_ratio"
    limits: ClassVar[dict[str, dict[str, float]]] = {"min_ratio": {}}
    line: ClassVar[tuple[str, str, str] | None] = (
        "min_ratio",
        ":",
        "step 0 must stay at or above {:.3g} × the last step",
    )
    min_ratio: float = 1e-3

    def _verdict(self, profile: GradientProfile) -> str:
        return "vanishing" if not METRICS["ratio"].value(profile) >= self.min_ratio else "ok"

    def explain(self, profile: GradientProfile) -> list[str]:
        return [f"  {METRICS['ratio'].sentence(profile)}, required >= {self.min_ratio:.3g} ({self._why()})"]

    def scale(self) -> Scale:
        bound = math.log10(self.min_ratio)
        return Scale(
            "ratio first/last", lambda p: p.log10_ratio, bound, lambda v: not v >= bound, log10_number, self._why()
        )

    def _why(self) -> str:
        return "min_ratio"


@dataclass(frozen=True)
class NoWorseThan(NoVanishing):
    """No vanishing below a reference's ratio over `factor`: the reference was probed the same way."""

    assertion: ClassVar[str] = "assert_no_worse_than"
    factor: float = 10.0
    reference: str = ""
    reference_ratio: float = math.nan
    limits: ClassVar[dict[str, dict[str, float]]] = {"factor": {"lower": 1.0}}

    def _why(self) -> str:
        return f"{self.reference}'s ratio {self.reference_ratio:.3g} / factor {self.factor:g}"


@dataclass(frozen=True)
class NoExploding(Check):
    """No step's gradient norm exceeds `max_ratio` times the last step's."""

    assertion: ClassVar[str] = "assert_no_exploding"
    failing: ClassVar[str] = "exploding"
    limits: ClassVar[dict[str, dict[str, float]]] = {"max_ratio": {}}
    line: ClassVar[tuple[str, str, str] | None] = ("max_ratio", "-.", "no step may exceed {:.3g} × the last step")
    max_ratio: float = 1e3

    def _verdict(self, profile: GradientProfile) -> str:
        return "exploding" if METRICS["peak_ratio"].value(profile) > self.max_ratio else "ok"

    def explain(self, profile: GradientProfile) -> list[str]:
        step = int(profile.steps[int(profile.norms.argmax())])
        figure = METRICS["peak_ratio"].sentence(profile)
        return [f"  {figure}, allowed <= {self.max_ratio:.3g} (max_ratio); peak at step {step}"]

    def scale(self) -> Scale:
        bound = math.log10(self.max_ratio)
        return Scale("largest norm / last step's", log10_peak, bound, lambda v: v > bound, log10_number, "max_ratio")


@dataclass(frozen=True)
class FiniteGradients(Check):
    """No timestep's gradient is NaN or infinite."""

    assertion: ClassVar[str] = "assert_finite_gradients"


@dataclass(frozen=True)
class MemoryHorizon(Check):
    """The gradient stays at or above `threshold` x the last step's for at least `min_steps` steps back."""

    assertion: ClassVar[str] = "assert_memory_horizon"
    failing: ClassVar[str] = "vanishing"
    floor: ClassVar[str | None] = "threshold"
    limits: ClassVar[dict[str, dict[str, float]]] = {"threshold": {"upper": 1.0}}
    min_steps: int = 1
    threshold: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.min_steps, int) or isinstance(self.min_steps, bool) or self.min_steps < 1:
            raise InvalidArgumentError(f"min_steps must be a positive int, got {self.min_steps!r}")
        super().__post_init__()

    def fits(self, seq_len: int) -> None:
        if isinstance(seq_len, int) and self.min_steps > seq_len - 1:
            raise InvalidArgumentError(
                f"min_steps={self.min_steps} can never be met at seq_len={seq_len}: the horizon is at most seq_len - 1"
                f" = {seq_len - 1}; raise seq_len or lower min_steps"
            )

    def _verdict(self, profile: GradientProfile) -> str:
        return "vanishing" if profile.horizon(self.threshold) < self.min_steps else "ok"

    def explain(self, profile: GradientProfile) -> list[str]:
        return [
            f"  horizon({self.threshold:g}) = {profile.horizon(self.threshold)} steps, "
            f"required >= {self.min_steps} (min_steps)"
        ]

    def scale(self) -> Scale:
        return Scale(
            f"horizon({self.threshold:g})",
            lambda p: p.horizon(self.threshold),
            self.min_steps,
            lambda v: v < self.min_steps,
            lambda v: f"{v:g}",
            "min_steps",
        )

    def bounds(self, profile: GradientProfile) -> list[Bound]:
        start = profile.seq_len - 1 - self.min_steps
        above = f"{self.assertion}: must stay at or above {self.threshold:.3g} × the last step ..."
        return [
            Bound("y", self.threshold, "horizon", ":", above),
            Bound("x", start, "min_steps", "--", f"... from t = {start} on ({self.min_steps} steps back)"),
        ]


CHECKS: dict[str, type[Check]] = {
    c.assertion: c for c in (NoVanishing, NoExploding, FiniteGradients, MemoryHorizon, NoWorseThan)
}


def from_record(check: Mapping[str, Any] | None) -> Check | None:
    """The check object of a recorded check, or None for a plain probe or a check this version does not know."""
    if not check or check.get("assertion") not in CHECKS:
        return None
    cls = CHECKS[check["assertion"]]
    names = {f.name for f in dataclasses.fields(cls)}
    thresholds = check.get("thresholds") or {}
    try:
        return cls(**{k: v for k, v in thresholds.items() if k in names})
    except (InvalidArgumentError, InvalidArgumentTypeError, TypeError):
        return None
