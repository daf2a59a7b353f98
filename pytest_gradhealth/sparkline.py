"""A log-scale sparkline of a gradient profile: one glyph per bucket of timesteps, earliest on the left."""

from __future__ import annotations

import math
from collections.abc import Iterable

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
