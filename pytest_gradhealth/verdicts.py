"""Verdicts and the words around them: the verdict vocabulary, the session's judgement of an unchecked probe, the
failure message of a check, and the log-scale sparkline they show. Pure Python over the profile: no torch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pytest_gradhealth.metrics import METRICS, peak_ratio, summary

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile

# Worst first: reports sort by this order.
VERDICTS = ("non-finite", "disconnected", "exploding", "vanishing", "ok")

BARS = "▁▂▃▄▅▆▇█"
NONFINITE = "!"
ZERO = "·"


def sparkline(norms: Iterable[float], width: int = 32) -> str:
    """Bars scaled between the smallest and largest positive finite norm on a log10 axis.

    A bucket with a NaN/Inf norm shows `!`, one whose norms are all exactly zero shows `·`.
    """
    values = [float(v) for v in norms]
    if not values:
        return ""
    width = max(1, min(width, len(values)))
    buckets = [values[len(values) * i // width : len(values) * (i + 1) // width] for i in range(width)]
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    low, high = (min(logs), max(logs)) if logs else (0.0, 0.0)
    span = high - low
    glyphs = []
    for bucket in buckets:
        if any(not math.isfinite(v) for v in bucket):
            glyphs.append(NONFINITE)
            continue
        positive = [v for v in bucket if v > 0]
        if not positive:
            glyphs.append(ZERO)
            continue
        mean_log = sum(math.log10(v) for v in positive) / len(positive)
        level = (mean_log - low) / span if span > 0 else 1.0
        glyphs.append(BARS[min(len(BARS) - 1, max(0, round(level * (len(BARS) - 1))))])
    return "".join(glyphs)


def judge(profile: GradientProfile, min_ratio: float, max_ratio: float) -> str:
    """The verdict on a profile that no assertion judged: the session's min_ratio and max_ratio applied."""
    if not profile.finite:
        return "non-finite"
    if peak_ratio(profile) > max_ratio:
        return "exploding"
    return "vanishing" if not METRICS["ratio"].value(profile) >= min_ratio else "ok"


def failure_message(
    assertion: str, verdict: str, profile: GradientProfile, explanation: Sequence[str], floor: float | None, hint: str
) -> str:
    """What failed, by how much, where, and what to try: readable without the source.

    `explanation` holds the check's lines (figure against bound), `floor` the share of the last step's gradient
    below which the profile counts as vanished (None when the check has none), `hint` the advice to give.
    """
    lines = [
        f"{assertion}: gradient {verdict} in {profile.model} at seq_len={profile.seq_len} "
        f"(measure={profile.measure}, batch={profile.batch_size}, seed={profile.seed}, dtype={profile.dtype})"
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
    elif len(profile.underflow_steps):
        lines.append(
            f"  {len(profile.underflow_steps)} step(s) underflowed to exactly zero in {profile.dtype}: "
            "their true size is unknown; probe with dtype=torch.float64 to measure it"
        )
    lines.append(f"  {summary(profile)}")
    finite = [float(v) for v in profile.norms if 0 < v < math.inf]
    span = f"[{min(finite):.2g} .. {max(finite):.2g}]" if finite else ""
    lines.append(f"  profile (log scale, step 0 -> {profile.seq_len - 1}): {sparkline(profile.norms, 40)} {span}")
    lines.append(f"  hint: {hint}")
    return "\n".join(lines)
