"""Fail rules for CI gating (`ratio:10x`, `half_life:20%`, `horizon:5`): parsed without torch or numpy."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pytest_gradhealth.errors import InvalidArgumentError

METRICS = ("ratio", "half_life", "horizon")
_RULE = re.compile(r"^(?P<metric>[a-z_]+):(?P<amount>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)(?P<unit>x|%)?$")


@dataclass(frozen=True)
class FailRule:
    """A regression threshold: the metric may not drop by more than `amount` (a factor, a percentage or steps)."""

    metric: str
    amount: float
    unit: str  # "x": by a factor, "%": by a percentage, "": by an absolute amount

    def __str__(self) -> str:
        return f"{self.metric}:{self.amount:g}{self.unit}"

    def regressed(self, old: float, new: float) -> bool:
        """True when `new` fell further below `old` than the rule allows (a finite value turning NaN does too)."""
        if math.isnan(old):
            return False
        if math.isnan(new):
            return True
        if self.unit == "x":
            return new < old / self.amount
        if self.unit == "%":
            return new < old * (1 - self.amount / 100)
        return new < old - self.amount


def parse_fail_rule(text: str, option: str = "--gradhealth-compare-fail") -> FailRule:
    """Parse `metric:amount[x|%]`; the error names the `option` it came from and lists the accepted forms."""
    forms = (
        "ratio:10x (ratio fell by more than a factor of 10), half_life:20% (by more than 20%), "
        "horizon:5 (by more than 5 steps)"
    )
    match = _RULE.match(text.strip().lower())
    if not match or match["metric"] not in METRICS:
        raise InvalidArgumentError(f"{option}: cannot read {text!r}; expected METRIC:AMOUNT such as {forms}")
    metric, amount, unit = match["metric"], float(match["amount"]), match["unit"] or ""
    if metric == "ratio" and unit != "x":
        raise InvalidArgumentError(
            f"{option}: {text!r}: ratios span orders of magnitude, give a factor such as ratio:10x"
        )
    if (unit == "x" and amount <= 1) or (unit == "%" and not 0 < amount < 100) or amount <= 0:
        raise InvalidArgumentError(
            f"{option}: {text!r}: a factor must be > 1, a percentage between 0 and 100, and a step count > 0"
        )
    return FailRule(metric, amount, unit)
