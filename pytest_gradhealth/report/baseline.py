"""Compare a session's probes with a saved baseline, probe by probe, against the fail rules.

A probe is compared only when it was measured the way its baseline was (`SETTINGS`); a baseline probe the run did
not produce is "removed" when the run covered its test, "not run" when it did not (deselected, skipped, not reached).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from pytest_gradhealth.metrics import METRICS
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.gate import FailRule
from pytest_gradhealth.report.records import ProbeRecord

# what must match between a probe and its baseline for their figures to be comparable, each a `GradientProfile` field;
# None on either side (a version that did not record it) is not compared, except for seeds, where None is one draw.
# seeds comes before batch_size: a seeded profile pools seeds x the batch, and the message names the seeds first
SETTINGS = ("seq_len", "measure", "dtype", "seeds", "batch_size", "seed", "mode", "inputs", "layer", "warmup")
# statuses, in the order a report lists them; FAILING ones fail the gate
STATUSES = ("regressed", "mismatch", "removed", "new", "not run", "ok")
FAILING = ("regressed", "mismatch", "removed")


def metric(profile: GradientProfile, name: str) -> float:
    """The figure of `profile` that the gate compares for the metric `name` (see `metrics.METRICS`)."""
    return METRICS[name].gated(profile)


@dataclass(frozen=True)
class Scope:
    """The tests a run covered, which tells a removed probe from one that did not run.

    `full`: no -k/-m/deselection/`::` selection; `ran`: tests whose body ran; `collected`: tests collected;
    `files`: the files they came from, None when unknown (a report without this record: every test counts as run).
    """

    full: bool = True
    ran: Collection[str] = frozenset()
    collected: Collection[str] = frozenset()
    files: Collection[str] | None = None

    def missing(self, test: str, exists: Callable[[str], bool]) -> str:
        """The status of a baseline probe of `test` that this run did not produce; `exists(file)` says whether a
        test file still exists."""
        if test in self.ran:
            return "removed"  # the test ran and no longer measures it
        if test in self.collected or not self.full:
            return "not run"  # skipped, deselected or not reached; or outside a partial run's selection
        file = test.split("::")[0]
        if self.files is None or file in self.files or not exists(file):
            return "removed"  # its file was run and the test is gone, or the file itself is gone
        return "not run"  # its file lies outside the paths this run was given


@dataclass
class Comparison:
    """One probe matched by key: its old and new record, the rules its change broke, the settings that differ."""

    key: str
    old: ProbeRecord | None
    new: ProbeRecord | None
    broken: list[FailRule] = field(default_factory=list)
    mismatch: list[str] = field(default_factory=list)  # "seq_len 100 -> 10"
    absent: str = "removed"  # the status of a baseline probe this run did not produce

    @property
    def status(self) -> str:
        if self.old is None:
            return "new"
        if self.new is None:
            return self.absent
        if self.mismatch:
            return "mismatch"
        return "regressed" if self.broken else "ok"

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    @property
    def reason(self) -> str:
        """Why the probe fails the gate, in words; empty when it does not."""
        if self.status == "regressed":
            return ", ".join(map(str, self.broken))
        if self.status == "mismatch":
            return f"{', '.join(self.mismatch)}: measured differently, re-save the baseline"
        if self.status == "removed":
            return "in the baseline, no longer measured: re-save the baseline if that is intended"
        return ""

    @property
    def log10_change(self) -> float:
        """Change in log10(ratio): -2 means a hundred times less gradient reaches the first step."""
        if self.old is None or self.new is None:
            return math.nan
        old, new = self.old.profile.log10_ratio, self.new.profile.log10_ratio
        if not (math.isfinite(old) and math.isfinite(new)):
            return -math.inf if math.isfinite(old) and new == -math.inf else math.nan
        return new - old


def settings_mismatch(old: GradientProfile, new: GradientProfile) -> list[str]:
    """The settings measured differently, as "name old -> new" ("seeds 8 -> none": a single draw now)."""
    result = []
    for name in SETTINGS:
        a, b = getattr(old, name, None), getattr(new, name, None)
        if a != b and (name == "seeds" or (a is not None and b is not None)):
            result.append(f"{name} {'none' if a is None else a} -> {'none' if b is None else b}")
    return result


def compare(
    baseline: Sequence[ProbeRecord],
    current: Sequence[ProbeRecord],
    rules: Sequence[FailRule],
    scope: Scope | None = None,
    exists: Callable[[str], bool] = lambda file: True,
) -> list[Comparison]:
    """Match probes by key; a probe missing from the baseline is new (never a failure)."""
    scope = scope or Scope()
    old = {r.key: r for r in baseline}
    new = {r.key: r for r in current}
    result = []
    for key in sorted(old.keys() | new.keys()):
        row = Comparison(key, old.get(key), new.get(key))
        if row.old is not None and row.new is not None:
            row.mismatch = settings_mismatch(row.old.profile, row.new.profile)
            row.broken = [rule for rule in rules if rule.broken_by(row.old.profile, row.new.profile)]
        elif row.old is not None:
            row.absent = scope.missing(row.old.test, exists)
        result.append(row)
    return result
