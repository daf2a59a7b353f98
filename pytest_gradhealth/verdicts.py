"""Verdicts and the words around them: the verdict vocabulary, the session's judgement of an unchecked probe, the
failure message of a check, and the log-scale sparkline they show. Pure Python over the profile: no torch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pytest_gradhealth.intervals import Interval, median_interval
from pytest_gradhealth.metrics import METRICS, log10_number, peak_ratio, summary

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile

# Worst first: reports sort by this order. "uncertain": with seeds=N, the interval of the judged figure straddles the
# threshold (some draws pass, some fail); it fails a test like the others, as its own verdict.
VERDICTS = ("non-finite", "disconnected", "exploding", "vanishing", "uncertain", "ok")
LEVEL = 0.95  # the coverage of the interval a verdict with seeds=N judges

BARS = "▁▂▃▄▅▆▇█"
NONFINITE = "!"
ZERO = "·"


def sparkline(log10_norms: Iterable[float], width: int = 32) -> str:
    """Bars scaled between the smallest and largest finite log10 norm (`profile.log10_norms`).

    A bucket with a NaN/Inf norm shows `!`, one whose norms are all exactly zero (log10 -inf) shows `·`.
    """
    values = [float(v) for v in log10_norms]
    if not values:
        return ""
    width = max(1, min(width, len(values)))
    buckets = [values[len(values) * i // width : len(values) * (i + 1) // width] for i in range(width)]
    logs = [v for v in values if math.isfinite(v)]
    low, high = (min(logs), max(logs)) if logs else (0.0, 0.0)
    span = high - low
    glyphs = []
    for bucket in buckets:
        if any(math.isnan(v) or v == math.inf for v in bucket):
            glyphs.append(NONFINITE)
            continue
        reached = [v for v in bucket if v > -math.inf]
        if not reached:
            glyphs.append(ZERO)
            continue
        level = (sum(reached) / len(reached) - low) / span if span > 0 else 1.0
        glyphs.append(BARS[min(len(BARS) - 1, max(0, round(level * (len(BARS) - 1))))])
    return "".join(glyphs)


def judge(profile: GradientProfile, min_ratio: float, max_ratio: float) -> str:
    """The verdict on a profile that no assertion judged: the session's min_ratio and max_ratio applied; with seeds,
    to the interval of the per-seed figures (see `settle`)."""
    if not finite(profile):
        return "non-finite"
    if not profile.seed_profiles:
        if peak_ratio(profile) > max_ratio:
            return "exploding"
        return "vanishing" if not METRICS["ratio"].value(profile) >= min_ratio else "ok"
    exploding, _ = settle([log10_peak(p) for p in profile.seed_profiles], lambda v: v > math.log10(max_ratio))
    vanishing, _ = settle([p.log10_ratio for p in profile.seed_profiles], lambda v: not v >= math.log10(min_ratio))
    if exploding == "fail":
        return "exploding"
    if vanishing == "fail":
        return "vanishing"
    return "uncertain" if "uncertain" in (exploding, vanishing) else "ok"


def finite(profile: GradientProfile) -> bool:
    """Whether every gradient is finite: in every seed's profile, with seeds (one NaN draw is a NaN verdict)."""
    return profile.finite and all(p.finite for p in profile.seed_profiles or ())


def log10_peak(profile: GradientProfile) -> float:
    """log10 of `peak_ratio`: the scale on which seeds judge exploding."""
    peak = peak_ratio(profile)
    return math.log10(peak) if peak > 0 else -math.inf


def settle(values: Sequence[float], fails: Callable[[float], bool], level: float = LEVEL) -> tuple[str, Interval]:
    """Judge per-seed figures by the confidence interval of their median (`intervals.median_interval`): "fail" when
    `fails` holds at both ends, "ok" when at neither, "uncertain" when the interval straddles the threshold.
    `fails` must be monotone in the figure, as every threshold is."""
    interval = median_interval(values, level)
    low, high = fails(interval.low), fails(interval.high)
    return ("fail" if low and high else "uncertain" if low or high else "ok"), interval


def interval_lines(
    outcome: str, figure: str, interval: Interval, bound: float, label: str, show: Callable[[float], str]
) -> list[str]:
    """The lines of a failure message with seeds=N: the interval of `figure` (its values shown by `show`) against
    `bound` (the threshold named `label`), `outcome` as `settle` gave it; when uncertain, roughly how many seeds would
    settle the verdict."""
    coverage = f"{100 * interval.coverage:.0f}%"
    if interval.coverage < interval.level:
        coverage += f" (too few seeds for {100 * interval.level:.0f}%)"
    head = (
        f"  seeds={interval.n}: the {coverage} interval of the median {figure} is [{show(interval.low)} .. "
        f"{show(interval.high)}] (median {show(interval.median)}) against {show(bound)} ({label})"
    )
    if outcome != "uncertain":
        return [f"{head}: {'the whole interval fails' if outcome == 'fail' else 'the whole interval passes'}"]
    return [
        f"{head}: it straddles the bound, so the verdict depends on the draw",
        f"  about {interval.seeds_to_settle(bound)} seeds in all would settle it if the median stays where it is (the "
        "interval's width shrinks like 1/sqrt(N): N x (half-width / distance of the median from the bound)^2); or "
        f"move seq_len or {label} away from the model's figure",
    ]


def failure_message(
    assertion: str,
    verdict: str,
    profile: GradientProfile,
    explanation: Sequence[str],
    floor: float | None,
    advice: Sequence[str],
) -> str:
    """What failed, by how much, where, and what to try: readable without the source.

    `explanation` holds the check's lines (figure against bound), `floor` the share of the last step's gradient
    below which the profile counts as vanished (None when the check has none), `advice` the closing lines
    ("measured fix: ...", "hint: ...").
    """
    seed = f"seed={profile.seed}"
    if profile.seeds and profile.seed is not None:
        seed = f"seeds {profile.seed}..{profile.seed + profile.seeds - 1}"
    lines = [
        f"{assertion}: gradient {verdict} in {profile.model} at seq_len={profile.seq_len} "
        f"(measure={profile.measure}, batch={profile.batch_size}, {seed}, dtype={profile.dtype})"
    ]
    if verdict == "non-finite":
        bad = profile.nonfinite_steps
        lines.append(
            f"  NaN/Inf gradient at {len(bad)} step(s), first at step {int(bad[0])} "
            f"({profile.seq_len - 1 - int(bad[0])} steps back from the last)"
        )
    else:
        lines += explanation
    below = profile.first_step_below(floor) if verdict == "vanishing" and floor is not None else None
    if below is not None:
        lines.append(
            f"  falls below {floor:.3g} x the last step's gradient at step {below} "
            f"({profile.seq_len - 1 - below} steps back)"
        )
    if len(profile.underflow_steps) == len(profile.norms) - 1:
        lines.append(
            "  no gradient at all reaches any step before the last: the last output depends on the last input only "
            "(no recurrence, or a layout mismatch between the probe and the model: check batch_first)"
        )
    else:
        lines += _precision_lines(profile)
    lines += transient_lines(profile)
    lines.append(f"  {summary(profile)}")
    logs = [float(v) for v in profile.log10_norms if math.isfinite(v)]
    span = f"[{log10_number(min(logs), 2)} .. {log10_number(max(logs), 2)}]" if logs else ""
    line = sparkline(profile.log10_norms, 40)
    lines.append(f"  profile (log scale, step 0 -> {profile.seq_len - 1}): {line} {span}")
    lines += [f"  {line}" for line in advice]
    return "\n".join(lines)


def transient_lines(profile: GradientProfile) -> list[str]:
    """Where the profile is U-shaped by its start from a zero state (`profile.transient`): how much, and `warmup=`."""
    if not profile.transient:
        return []
    logs = np.where(np.isfinite(profile.log10_norms), profile.log10_norms, np.inf)
    lowest = 1 + int(np.argmin(logs[1:]))
    rise = 10.0 ** (logs[0] - logs[lowest])
    return [
        f"  transient: the profile is U-shaped, step {int(profile.steps[0])}'s gradient is {rise:.3g}x the smallest "
        f"(step {int(profile.steps[lowest])}): the start from a zero state, not the stationary decay, which ratio, "
        f"rate and half-life mix in; probe with warmup= (e.g. warmup={profile.seq_len}) to measure past it"
    ]


def _precision_lines(profile: GradientProfile) -> list[str]:
    """What exact zeros and subnormal values mean for the numbers: structure, or the dtype's range."""
    zeros, lines = len(profile.underflow_steps), []
    float64 = profile.dtype == "float64"
    if profile.log10_sample_norms is not None:
        lines.append(
            f"  the gradient left {profile.dtype}'s range: it was measured with the backward pass renormalised between "
            "chunks of the sequence, exact in log10 (profile.log10_norms, profile.log10_ratio)"
        )
    if zeros and profile.zeros == "structural":
        lines.append(
            f"  {zeros} step(s) get exactly zero gradient because no path reaches them (a receptive field, a mask, "
            "dead units): that is the model's structure, not underflow"
        )
    elif zeros:
        fix = "shorten seq_len to measure the decay" if float64 else "probe with dtype=torch.float64 to measure it"
        lines.append(
            f"  {zeros} step(s) underflowed to exactly zero in {profile.dtype}: their true size is unknown; {fix}"
        )
    subnormal = 0 if profile.subnormal_steps is None else len(profile.subnormal_steps)
    if subnormal and not float64:
        lines.append(
            f"  {subnormal} step(s) hold subnormal gradient values in {profile.dtype}, which keep few significant "
            "digits: their norms may be tens of percent off; probe with dtype=torch.float64"
        )
    return lines
