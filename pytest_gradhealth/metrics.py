"""The figures read from a gradient profile, in one registry.

Each `Metric` says how it is computed from a `GradientProfile`, how it is shown, which direction is worse and what
a gate tolerance (`ratio:10x`, `half_life:20%`, `horizon:5`) means for it. The report table, the baseline comparison,
the fail rules, the plot titles and the failure messages all read this registry: a new metric is one entry here.

Pure Python and the profile's own numpy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile

# gate units: "x" a factor, "%" a percentage of the old value, "" an absolute amount (in the metric's own unit)
UNITS = {"x": "by more than a factor of {amount:g}", "%": "by more than {amount:g}%", "": "by more than {amount:g}"}


def number(value: float, digits: int = 3) -> str:
    """A short figure: 'inf', 'nan', or `digits` significant digits."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def log10_number(log10: float, digits: int = 3) -> str:
    """A figure given by its log10, as `number` shows it, also outside float64's range: 10**-5000 is '1e-5000'."""
    if not math.isfinite(log10) or -300 < log10 < 300:
        return number(10.0**log10 if not math.isnan(log10) else math.nan, digits)
    exponent = math.floor(log10)
    mantissa = f"{10.0 ** (log10 - exponent):.{digits}g}"
    if mantissa.startswith("10"):  # rounded up to the next power of ten
        mantissa, exponent = "1", exponent + 1
    return f"{mantissa}e{exponent:+d}" if mantissa != "1" else f"1e{exponent:+d}"


def peak_ratio(profile: GradientProfile) -> float:
    """The largest norm over the last step's: how far above the latest step's gradient any step climbs."""
    last = float(profile.norms[-1])
    return float(profile.norms.max()) / last if last > 0 else math.inf


def _half_life_up_to_seq_len(profile: GradientProfile) -> float:
    """A half-life longer than the probed sequence counts as seq_len: the profile cannot tell 700 steps from
    infinity, and a rate moving from 1.001 to 0.999 is no regression."""
    half_life = profile.half_life
    return math.nan if math.isnan(half_life) else min(half_life, float(profile.seq_len))


@dataclass(frozen=True)
class Metric:
    """One figure of a profile: how to compute, show, compare and gate it."""

    name: str  # the key in fail rules and JSON: half_life
    label: str  # the column header: half-life
    compute: Callable[[GradientProfile], float]
    phrase: str  # the figure in a sentence of a failure message, a format string for its value
    worse: str = "lower"  # "lower" or "higher": the direction in which a change is a regression
    units: tuple[str, ...] = ()  # the gate units a fail rule may give (see UNITS); () is never gated
    example: str = ""  # a fail rule for help texts, e.g. ratio:10x
    unit_note: str = ""  # why some units are refused, when they are
    column: bool = True  # shown in the report table
    compared: bool = True  # a column of the baseline comparison, when gated (else only its rule's failures show it)
    narrow: bool = True  # kept when the table must fit a narrow terminal
    in_summary: bool = False  # in the "rate ..., half-life ..., horizon ..." line of failure messages
    log_scale: bool = False  # compared as a change in log10 (it spans orders of magnitude)
    # a log-scale metric's log10, exact where the value itself leaves float64's range: shown and gated from it
    log10: Callable[[GradientProfile], float] | None = None
    gate: Callable[[GradientProfile], float] | None = None  # what the gate compares, when not `compute`
    integer: bool = False

    def value(self, profile: GradientProfile) -> float:
        return float(self.compute(profile))

    def gated(self, profile: GradientProfile) -> float:
        """The value a baseline comparison reads: the log10 of a log-scale metric."""
        return float((self.gate or self.log10 or self.compute)(profile))

    def format(self, value: float) -> str:
        return str(int(value)) if self.integer and math.isfinite(value) else number(value)

    def show(self, profile: GradientProfile) -> str:
        """The metric of `profile`, formatted for a table cell."""
        if self.log10 is not None:
            return log10_number(float(self.log10(profile)))
        return self.format(self.value(profile))

    def sentence(self, profile: GradientProfile) -> str:
        """The metric of `profile` in the words of a failure message."""
        if self.log10 is not None:  # its phrase takes the shown figure: 1e-5000 is no float
            return self.phrase.format(self.show(profile))
        value = self.value(profile)
        return self.phrase.format(int(value) if self.integer else value)

    def regressed(self, old: float, new: float, amount: float, unit: str) -> bool:
        """True when `new` moved further in the worse direction than `amount` (in `unit`) allows. A finite value
        turning NaN is a regression; a NaN baseline never is."""
        if math.isnan(old):
            return False
        if math.isnan(new):
            return True
        if self.worse == "higher":
            old, new = -old, -new  # the same test on the mirrored axis
        if unit == "x" and self.log10 is not None:  # compared in log10: a factor is a difference there
            return new < old - math.log10(amount)
        if unit == "x":
            return new < old / amount if old >= 0 else new < old * amount
        if unit == "%":
            return new < old * (1 - amount / 100 if old >= 0 else 1 + amount / 100)
        return new < old - amount


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "ratio",
            "ratio",
            lambda p: p.ratio,
            "ratio first/last = {}",
            log10=lambda p: p.log10_ratio,
            units=("x",),
            example="ratio:10x",
            unit_note="ratios span orders of magnitude, give a factor such as ratio:10x",
            log_scale=True,
        ),
        Metric("rate", "rate", lambda p: p.rate, "rate {:.4g} per step", in_summary=True, narrow=False),
        Metric(
            "half_life",
            "half-life",
            lambda p: p.half_life,
            "half-life {:.3g} steps",
            units=("%", "x", ""),
            example="half_life:20%",
            in_summary=True,
            narrow=False,
            gate=_half_life_up_to_seq_len,
        ),
        Metric(
            "horizon",
            "horizon",
            lambda p: p.horizon(),
            "horizon(0.01) {:d} steps",
            units=("", "%", "x"),
            example="horizon:5",
            in_summary=True,
            integer=True,
        ),
        Metric(
            "lyapunov",
            "lyapunov",
            lambda p: p.lyapunov,
            "Lyapunov exponent {:.4g} per step",
            units=("",),
            example="lyapunov:0.005",
            unit_note="an exponent is a log factor per step, give the change allowed in it such as lyapunov:0.005",
            column=False,  # not yet a table column: the table's layout is pinned by the report's tests
        ),
        Metric(
            "peak_ratio",
            "peak",
            peak_ratio,
            "largest norm / last step's = {:.3g}",
            worse="higher",
            units=("x",),  # the rule that catches a change that makes the gradient explode
            example="peak_ratio:10x",
            unit_note="a peak ratio is a factor, give the growth allowed in it such as peak_ratio:10x",
            column=False,
            compared=False,
        ),
    )
}


def gated() -> list[Metric]:
    """The metrics a fail rule may name, in registry order."""
    return [m for m in METRICS.values() if m.units]


def columns() -> list[Metric]:
    """The metrics of the report table, in registry order."""
    return [m for m in METRICS.values() if m.column]


def summary(profile: GradientProfile) -> str:
    """The metrics of a failure message's summary line: 'rate 0.9 per step, half-life 6.58 steps, ...'."""
    return ", ".join(m.sentence(profile) for m in METRICS.values() if m.in_summary)
