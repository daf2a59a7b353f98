"""Pure renderers: records in, lines of text out. The plugin's hooks and the command line only write them."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from pytest_gradhealth.metrics import Metric, columns, gated, number
from pytest_gradhealth.profile import TRANSIENT_RISE
from pytest_gradhealth.report.baseline import STATUSES, Comparison
from pytest_gradhealth.report.records import ProbeRecord, worst_first
from pytest_gradhealth.verdicts import VERDICTS, sparkline

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COLOURS = {
    "ok": "32",
    "vanishing": "31",
    "exploding": "31",
    "non-finite": "31;1",
    "disconnected": "33",
    "uncertain": "35",
}


def paint(text: str, verdict: str, color: bool) -> str:
    return f"\x1b[{_COLOURS[verdict]}m{text}\x1b[0m" if color and verdict in _COLOURS else text


def summary_line(records: Sequence[ProbeRecord]) -> str:
    counts = Counter(r.verdict for r in records)
    parts = [f"{counts[verdict]} {verdict}" for verdict in VERDICTS if counts[verdict]]
    return f"gradhealth: {len(records)} probe{'s' * (len(records) != 1)}" + (f": {', '.join(parts)}" if parts else "")


def render_table(
    records: Sequence[ProbeRecord], *, width: int = 120, verbosity: int = 0, color: bool = False
) -> list[str]:
    """The report table, worst first. -v adds columns; -q keeps the rows in a compact form (the columns that fit a
    narrow terminal); -qq lists only the probes that are not ok.

    The first layout that fits `width` wins: one row per probe with its test id; the same without the sparkline;
    then test ids on lines of their own above their probes, with fewer columns as the terminal narrows. A line
    after the table names the columns left out and how to see them.
    """
    lines = [summary_line(records)]
    shown = [r for r in worst_first(list(records)) if verbosity > -2 or r.verdict != "ok"]
    if not shown:
        return lines
    headers = ["test", "probe", "seq_len", *(m.label for m in columns()), "verdict", "profile"]
    if verbosity > 0:
        headers[2:2] = ["model", "measure", "dtype", "batch"]
    rows = []
    for record in shown:
        p = record.profile
        probe = record.probe if p.measure == "input" or verbosity > 0 else f"{record.probe} ({p.measure})"
        row: list[Any] = [printable(record.test), printable(probe)]
        if verbosity > 0:
            row += [p.model, p.measure, p.dtype, p.batch_size]
        row += [p.seq_len, *(m.show(p) for m in columns())]
        row += [paint(record.verdict, record.verdict, color), sparkline(p.log10_norms, 24)]
        rows.append(dict(zip(headers, row, strict=True)))
    narrow = [h for h in headers[:-1] if h not in {m.label for m in columns() if not m.narrow}]
    layouts = [(True, headers), (True, headers[:-1]), (False, headers[1:]), (False, headers[1:-1])]
    layouts = [(True, narrow), (False, narrow[1:])] if verbosity < 0 else [*layouts, (False, narrow[1:])]
    for with_test, shown_columns in layouts:
        table = _table(rows, shown_columns, grouped=not with_test)
        if max(len(_ANSI.sub("", line)) for line in table) <= width or verbosity > 0:
            break
    dropped = [h for h in headers if h not in shown_columns and h != "test"]
    if dropped and verbosity == 0:
        table.append(f"(left out to fit {width} columns: {', '.join(dropped)}; -v shows every column)")
    return [*lines, *table, *transient_note(shown)]


def transient_note(records: Sequence[ProbeRecord]) -> list[str]:
    """A line naming the probes whose profile is U-shaped by the start from a zero state (`profile.transient`)."""
    found = [r for r in records if r.profile.transient]
    if not found:
        return []
    names = ", ".join(printable(r.key) for r in found[:3]) + (", ..." if len(found) > 3 else "")
    return [
        f"transient: {len(found)} probe(s) U-shaped by the start from a zero state (step 0 >= {TRANSIENT_RISE:g}x the "
        f"smallest norm after it; ratio, rate and half-life mix it in): {names}; probe with warmup= to measure past it"
    ]


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


def render_diagnoses(records: Sequence[ProbeRecord]) -> list[str]:
    """Why each failing probe vanished and what the measured remedies change (-v): the diagnoses that failing
    assertions carry in their check records."""
    from pytest_gradhealth.diagnosis import Diagnosis

    lines = []
    for record in worst_first(list(records)):
        found = (record.check or {}).get("diagnosis")
        if found is not None:
            lines.append(f"diagnosis of {printable(record.test)} [{printable(record.probe)}]:")
            lines += [f"  {printable(line)}" for line in Diagnosis.from_dict(found).lines()]
    return lines


def render_references(references: Sequence[ProbeRecord], *, width: int = 120) -> list[str]:
    """Reference models measured the same way as the session's probes: where a model stands."""
    if not references:
        return []
    rows = []
    for record in references:
        p = record.profile
        rows.append(
            [f"{p.input_size}->{p.hidden_size}", p.seq_len, printable(record.probe)]
            + [*(m.show(p) for m in columns()), record.verdict]
            + ([sparkline(p.log10_norms, 24)] if width >= 100 else [])
        )
    headers = ["input->hidden", "seq_len", "reference", *(m.label for m in columns()), "verdict"]
    headers += ["profile"] if width >= 100 else []
    table = tabulate(rows, headers, tablefmt="simple", disable_numparse=True)
    return ["reference models (same sizes, measured the same way):", *table.splitlines()]


def render_comparison(rows: Sequence[Comparison], baseline: str, *, width: int = 120, color: bool = False) -> list[str]:
    """Old against new, probe by probe: each gated metric (a log-scale one as old, new and the change in log10), and
    the status, failures first. When the table is wider than `width`, each probe's key goes on a line of its own."""
    counts = Counter(row.status for row in rows)
    lines = [f"gradhealth baseline {printable(baseline)}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    headers = ["probe"]
    shown = [m for m in gated() if m.compared]
    for m in shown:
        headers += [f"old {m.label}", f"new {m.label}", "Δlog10"] if m.log_scale else [m.label]
    headers.append("status")
    table = []
    for row in sorted(rows, key=lambda r: (STATUSES.index(r.status), r.key)):
        cells = [printable(row.key)]
        for m in shown:
            cells += _change(m, row)
        cells.append(paint(status_text(row), "vanishing" if row.failed else "ok", color))
        table.append({"test": cells[0], **dict(zip(headers, cells, strict=True))})
    flat = _table(table, headers, grouped=False)
    if max(len(_ANSI.sub("", line)) for line in flat) <= width:
        return [*lines, *flat]
    return [*lines, *_table(table, headers[1:], grouped=True)]


def _change(m: Metric, row: Comparison) -> list[str]:
    """The cells of metric `m` in a comparison row: old, new and Δlog10 for a log-scale metric, else old -> new."""
    old = m.show(row.old.profile) if row.old else "-"
    new = m.show(row.new.profile) if row.new else "-"
    if not m.log_scale:
        return [f"{old} -> {new}" if row.old and row.new else "-"]
    change = row.log10_change
    return [old, new, f"{change:+.2f}" if math.isfinite(change) else number(change)]


def status_text(row: Comparison) -> str:
    """The status of a compared probe with what broke: regressed (ratio:10x), mismatch (seq_len 100 -> 10: ...)."""
    if row.status == "regressed":
        return f"regressed ({', '.join(map(str, row.broken))})"
    if row.status == "mismatch":
        return f"mismatch ({printable(', '.join(row.mismatch))}: re-save the baseline)"
    return row.status


def gate_lines(rows: Sequence[Comparison]) -> list[str]:
    """One line per kind of gate failure (regressed past which rules, measured differently, removed); none when
    the gate passes."""
    lines = []
    broken = [row for row in rows if row.status == "regressed"]
    if broken:
        rules = ", ".join(sorted({str(rule) for row in broken for rule in row.broken}))
        lines.append(f"gradhealth: {len(broken)} probe(s) regressed past {rules}")
    mismatched = [row for row in rows if row.status == "mismatch"]
    if mismatched:
        what = printable("; ".join(sorted({", ".join(row.mismatch) for row in mismatched})))
        lines.append(
            f"gradhealth: {len(mismatched)} probe(s) measured with other settings than the baseline ({what}): "
            "re-save the baseline"
        )
    removed = [row for row in rows if row.status == "removed"]
    if removed:
        lines.append(
            f"gradhealth: {len(removed)} baseline probe(s) no longer measured by the tests that held them "
            f"(removed: {printable(removed[0].key)}{', ...' if len(removed) > 1 else ''}): re-save the baseline"
        )
    return lines


def printable(text: str) -> str:
    """`text` with control characters (ANSI escapes, NUL, newlines) written as escapes: ids from a file or a test
    name never drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
