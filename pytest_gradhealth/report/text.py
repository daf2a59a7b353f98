"""Pure renderers: records in, lines of text out. The plugin's hooks and the command line only write them."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from pytest_gradhealth.assertions import VERDICTS
from pytest_gradhealth.report.baseline import Comparison
from pytest_gradhealth.report.records import ProbeRecord, worst_first
from pytest_gradhealth.sparkline import sparkline

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COLOURS = {"ok": "32", "vanishing": "31", "exploding": "31", "non-finite": "31;1", "disconnected": "33"}


def number(value: float, digits: int = 3) -> str:
    """A short figure: 'inf', 'nan', or `digits` significant digits."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def paint(text: str, verdict: str, color: bool) -> str:
    return f"\x1b[{_COLOURS[verdict]}m{text}\x1b[0m" if color and verdict in _COLOURS else text


def summary_line(records: Sequence[ProbeRecord]) -> str:
    counts = Counter(r.verdict for r in records)
    parts = [f"{counts[verdict]} {verdict}" for verdict in VERDICTS if counts[verdict]]
    return f"gradhealth: {len(records)} probe{'s' * (len(records) != 1)}" + (f": {', '.join(parts)}" if parts else "")


def render_table(
    records: Sequence[ProbeRecord], *, width: int = 120, verbosity: int = 0, color: bool = False
) -> list[str]:
    """The report table, worst first. -q (verbosity < 0) lists only probes that are not ok; -v adds columns.

    The first layout that fits `width` wins: one row per probe with its test id; the same without the sparkline;
    then test ids on lines of their own above their probes, with fewer columns as the terminal narrows.
    """
    lines = [summary_line(records)]
    shown = [r for r in worst_first(list(records)) if verbosity >= 0 or r.verdict != "ok"]
    if not shown:
        return lines
    headers = ["test", "probe", "seq_len", "ratio", "rate", "half-life", "horizon", "verdict", "profile"]
    if verbosity > 0:
        headers[2:2] = ["model", "measure", "dtype", "batch"]
    rows = []
    for record in shown:
        p = record.profile
        probe = record.probe if p.measure == "input" or verbosity > 0 else f"{record.probe} ({p.measure})"
        row: list[Any] = [record.test, probe]
        if verbosity > 0:
            row += [p.model, p.measure, p.dtype, p.batch_size]
        row += [p.seq_len, number(p.ratio), number(p.rate), number(p.half_life), p.horizon()]
        row += [paint(record.verdict, record.verdict, color), sparkline(p.norms, 24)]
        rows.append(dict(zip(headers, row, strict=True)))
    layouts = [
        (True, headers),
        (True, headers[:-1]),
        (False, headers[1:]),
        (False, headers[1:-1]),
        (False, [h for h in headers[1:-1] if h not in ("rate", "half-life")]),
    ]
    for with_test, columns in layouts:
        table = _table(rows, columns, grouped=not with_test)
        if max(len(_ANSI.sub("", line)) for line in table) <= width or verbosity > 0:
            break
    return [*lines, *table]


def _table(rows: list[dict], columns: list[str], grouped: bool) -> list[str]:
    """A tabulate table; grouped: each test id on a line of its own above its probes' rows."""
    body = tabulate([[row[c] for c in columns] for row in rows], columns, tablefmt="simple", disable_numparse=True)
    if not grouped:
        return body.splitlines()
    head, *lines = body.splitlines()
    out, previous = [f"  {head}", f"  {lines[0]}"], None
    for row, line in zip(rows, lines[1:], strict=True):
        if row["test"] != previous:
            out.append(row["test"])
            previous = row["test"]
        out.append(f"  {line}")
    return out


def render_references(references: Sequence[ProbeRecord], *, width: int = 120) -> list[str]:
    """Reference models measured the same way as the session's probes: where a model stands."""
    if not references:
        return []
    rows = []
    for record in references:
        p = record.profile
        rows.append(
            [
                f"{p.input_size}->{p.hidden_size}",
                p.seq_len,
                record.probe,
                number(p.ratio),
                number(p.rate),
                number(p.half_life),
                p.horizon(),
                record.verdict,
            ]
            + ([sparkline(p.norms, 24)] if width >= 100 else [])
        )
    headers = ["input->hidden", "seq_len", "reference", "ratio", "rate", "half-life", "horizon", "verdict"]
    headers += ["profile"] if width >= 100 else []
    table = tabulate(rows, headers, tablefmt="simple", disable_numparse=True)
    return ["reference models (same sizes, measured the same way):", *table.splitlines()]


def render_comparison(rows: Sequence[Comparison], baseline: str, *, width: int = 120, color: bool = False) -> list[str]:
    """Old against new, probe by probe: ratio, change in log10 ratio, half-life, horizon, and the status.

    When the table is wider than `width`, each probe's key goes on a line of its own above its figures."""
    counts = Counter(row.status for row in rows)
    lines = [f"gradhealth baseline {baseline}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    order = {"regressed": 0, "removed": 1, "new": 2, "ok": 3}
    headers = ["probe", "old ratio", "new ratio", "Δlog10", "half-life", "horizon", "status"]
    table = []
    for row in sorted(rows, key=lambda r: (order[r.status], r.key)):
        old = row.old.profile if row.old else None
        new = row.new.profile if row.new else None
        status = row.status + (f" ({', '.join(map(str, row.broken))})" if row.broken else "")
        cells = [
            row.key,
            number(old.ratio) if old else "-",
            number(new.ratio) if new else "-",
            f"{row.log10_change:+.2f}" if math.isfinite(row.log10_change) else number(row.log10_change),
            f"{number(old.half_life)} -> {number(new.half_life)}" if old and new else "-",
            f"{old.horizon()} -> {new.horizon()}" if old and new else "-",
            paint(status, "vanishing" if row.broken else "ok", color),
        ]
        table.append({"test": row.key, **dict(zip(headers, cells, strict=True))})
    flat = _table(table, headers, grouped=False)
    if max(len(_ANSI.sub("", line)) for line in flat) <= width:
        return [*lines, *flat]
    return [*lines, *_table(table, headers[1:], grouped=True)]


def regression_line(rows: Sequence[Comparison]) -> str | None:
    """The line that says how many probes regressed past which rules, or None when none did."""
    broken = [row for row in rows if row.broken]
    if not broken:
        return None
    rules = ", ".join(sorted({str(rule) for row in broken for rule in row.broken}))
    return f"gradhealth: {len(broken)} probe(s) regressed past {rules}"
