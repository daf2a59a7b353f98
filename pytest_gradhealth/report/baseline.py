"""Compare a session's probes with a saved baseline, probe by probe, against the fail rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.gate import FailRule
from pytest_gradhealth.report.records import ProbeRecord


def metric(profile: GradientProfile, name: str) -> float:
    """The compared figures: ratio, half_life and horizon (at the default threshold, 0.01).

    A half-life longer than the probed sequence counts as seq_len: the profile cannot tell 700 steps from infinity,
    and a rate moving from 1.001 to 0.999 is no regression."""
    if name == "horizon":
        return float(profile.horizon())
    if name == "half_life":
        return min(profile.half_life, float(profile.seq_len)) if not math.isnan(profile.half_life) else math.nan
    return float(getattr(profile, name))


@dataclass
class Comparison:
    """One probe matched by key: its old and new record, and the rules its change broke."""

    key: str
    old: ProbeRecord | None
    new: ProbeRecord | None
    broken: list[FailRule] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.old is None:
            return "new"
        if self.new is None:
            return "removed"
        return "regressed" if self.broken else "ok"

    @property
    def log10_change(self) -> float:
        """Change in log10(ratio): -2 means a hundred times less gradient reaches the first step."""
        if self.old is None or self.new is None:
            return math.nan
        old, new = self.old.profile.ratio, self.new.profile.ratio
        if not (old > 0 and new > 0):
            return -math.inf if old > 0 and new == 0 else math.nan
        return math.log10(new) - math.log10(old)


def compare(
    baseline: Sequence[ProbeRecord], current: Sequence[ProbeRecord], rules: Sequence[FailRule]
) -> list[Comparison]:
    """Match probes by key; a probe missing from the baseline is new (never a failure)."""
    old = {r.key: r for r in baseline}
    new = {r.key: r for r in current}
    result = []
    for key in sorted(old.keys() | new.keys()):
        row = Comparison(key, old.get(key), new.get(key))
        if row.old is not None and row.new is not None:
            row.broken = [
                rule
                for rule in rules
                if rule.regressed(metric(row.old.profile, rule.metric), metric(row.new.profile, rule.metric))
            ]
        result.append(row)
    return result
