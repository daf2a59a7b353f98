"""Fail rules for CI gating (`ratio:10x`, `half_life:20%`, `horizon:5`), read from the metric registry."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.metrics import METRICS, UNITS, gated

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile

_RULE = re.compile(r"^(?P<metric>[a-z_]+):(?P<amount>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)(?P<unit>x|%)?$")


@dataclass(frozen=True)
class FailRule:
    """A regression threshold: the metric may not move the worse way by more than `amount` (a factor, a
    percentage or an absolute amount)."""

    metric: str
    amount: float
    unit: str  # "x": by a factor, "%": by a percentage, "": by an absolute amount

    def __str__(self) -> str:
        return f"{self.metric}:{self.amount:g}{self.unit}"

    def regressed(self, old: float, new: float) -> bool:
        """True when `new` moved further the worse way than the rule allows (a finite value turning NaN does too).
        Values as `Metric.gated` reads them: a ratio as its log10."""
        return METRICS[self.metric].regressed(old, new, self.amount, self.unit)

    def broken_by(self, old: GradientProfile, new: GradientProfile) -> bool:
        """True when the change from the profile `old` to `new` breaks the rule."""
        metric = METRICS[self.metric]
        return self.regressed(metric.gated(old), metric.gated(new))

    def cannot_judge(self, profile: GradientProfile) -> str:
        """Why the rule can never fire on a probe measured like the baseline `profile`; empty when it can."""
        return ""


SIGNIFICANT = "significant"
# calibrated by benchmarks/significant_gate.py (docs/science.md): the Lyapunov exponent must fall by more than this
# many nats per step (0.5% of the per-step factor), and the per-seed values must separate with chance <= 0.001
SIGNIFICANT_MIN_EFFECT = 0.005
SIGNIFICANT_ALPHA = 0.001
SIGNIFICANT_SEEDS = 8  # the seeds the calibration used, recommended to those who have too few


@dataclass(frozen=True)
class SignificantRule(FailRule):
    """`significant`: the Lyapunov exponent fell beyond what the seed spread explains (every new seed's value below
    every old seed's, a chance of 1 / C(n + m, n) <= `alpha` for a neutral change) and by more than `amount`.
    Needs seeds= on both sides (7 and 7 at least): `cannot_judge` says when a baseline probe has fewer. A gradient
    that turns non-finite where the baseline's was finite breaks it too."""

    metric: str = "lyapunov"
    amount: float = SIGNIFICANT_MIN_EFFECT
    unit: str = ""
    alpha: float = SIGNIFICANT_ALPHA

    def __str__(self) -> str:
        return SIGNIFICANT

    def broken_by(self, old: GradientProfile, new: GradientProfile) -> bool:
        from pytest_gradhealth.intervals import significantly_worse  # numpy: never on the plugin's import path

        if old.finite and not new.finite:
            return True
        metric = METRICS[self.metric]
        per_seed = [[metric.gated(p) for p in profile.seed_profiles or [profile]] for profile in (old, new)]
        return significantly_worse(*per_seed, metric.worse, self.amount, self.alpha)

    @property
    def min_seeds(self) -> int:
        """The fewest seeds on each side whose every-value-below ordering is rare enough to fail: 7 at 0.001."""
        from pytest_gradhealth.intervals import separation_chance

        return next(n for n in itertools.count(1) if separation_chance(n, n) <= self.alpha)

    def cannot_judge(self, profile: GradientProfile) -> str:
        draws = len(profile.seed_profiles or [profile])
        if draws >= self.min_seeds:
            return ""
        return f"measured with {draws} draw(s); {self} needs seeds of at least {self.min_seeds} on both sides"


def describe(rule: FailRule) -> str:
    """The rule in words: ratio:10x (ratio fell by more than a factor of 10)."""
    direction = "fell" if METRICS[rule.metric].worse == "lower" else "rose"
    return f"{rule} ({rule.metric} {direction} {UNITS[rule.unit].format(amount=rule.amount)})"


def _read(text: str) -> FailRule | None:
    """The rule `text` writes, unchecked; None when it is not of the form METRIC:AMOUNT[x|%]."""
    match = _RULE.match(text.strip().lower())
    return None if match is None else FailRule(match["metric"], float(match["amount"]), match["unit"] or "")


def parse_fail_rule(text: str, option: str = "--gradhealth-compare-fail") -> FailRule:
    """Parse `metric:amount[x|%]` or `significant`; the error names the `option` it came from and lists the
    accepted forms."""
    if text.strip().lower() == SIGNIFICANT:
        return SignificantRule()
    forms = ", ".join(describe(example) for m in gated() if (example := _read(m.example)))
    rule = _read(text)
    metric = METRICS.get(rule.metric) if rule else None
    if rule is None or metric is None or not metric.units:
        raise InvalidArgumentError(f"{option}: cannot read {text!r}; expected METRIC:AMOUNT such as {forms}")
    amount, unit = rule.amount, rule.unit
    if unit not in metric.units:
        raise InvalidArgumentError(f"{option}: {text!r}: {metric.unit_note}")
    if (
        not math.isfinite(amount)
        or (unit == "x" and amount <= 1)
        or (unit == "%" and not 0 < amount < 100)
        or amount <= 0
    ):
        raise InvalidArgumentError(
            f"{option}: {text!r}: a factor must be > 1, a percentage between 0 and 100 and an amount > 0, all "
            f"finite; for example {forms}"
        )
    return rule
