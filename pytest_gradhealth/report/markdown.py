"""The Markdown summary for a CI job summary or a pull-request comment: failures and changes first, then every probe
with its verdict and, against a baseline, its old -> new figures."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_gradhealth.metrics import columns
from pytest_gradhealth.report.baseline import STATUSES, Comparison
from pytest_gradhealth.report.records import ProbeRecord, worst_first
from pytest_gradhealth.report.text import gate_lines, printable, status_text, summary_line, transient_note


def cell(text: object) -> str:
    """Text safe in a Markdown table cell: control characters escaped, pipes and backticks quoted."""
    return printable(str(text)).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        f"| {' | '.join(headers)} |",
        f"|{'|'.join('---' for _ in headers)}|",
        *(f"| {' | '.join(map(cell, row))} |" for row in rows),
    ]


def render_markdown(
    records: Sequence[ProbeRecord], rows: Sequence[Comparison] | None = None, baseline: str | None = None
) -> list[str]:
    """The summary as Markdown lines: a headline, the gate's failures and the changed probes (when compared with a
    baseline), then a table of every probe, worst first."""
    lines = ["## Gradient health", "", f"**{cell(summary_line(records).removeprefix('gradhealth: '))}**", ""]
    if rows is not None:
        failures = gate_lines(rows)
        verdict = "fails" if failures else "passes"
        lines += [f"Compared with baseline `{cell(baseline)}`: the gate **{verdict}**.", ""]
        lines += [f"- :x: {cell(line.removeprefix('gradhealth: '))}" for line in failures]
        changed = [row for row in rows if row.status != "ok"]
        if changed:
            lines += ["", "### Changes", ""]
            lines += _comparison(sorted(changed, key=lambda r: (STATUSES.index(r.status), r.key)))
        lines += ["", "### Probes", ""]
        lines += _comparison(sorted(rows, key=lambda r: (STATUSES.index(r.status), r.key)))
        return lines
    headers = ["test", "probe", "seq_len", *(m.label for m in columns()), "verdict"]
    body = [
        [r.test, r.probe, str(r.profile.seq_len), *(m.show(r.profile) for m in columns()), r.verdict]
        for r in worst_first(list(records))
    ]
    note = [f"*{cell(line)}*" for line in transient_note(records)]
    return [*lines, "### Probes", "", *_table(headers, body), *(["", *note] if note else [])]


def _comparison(rows: Sequence[Comparison]) -> list[str]:
    headers = ["probe", "verdict", *(m.label for m in columns()), "status"]
    body = []
    for row in rows:
        figures = []
        for m in columns():
            old = m.show(row.old.profile) if row.old else "-"
            new = m.show(row.new.profile) if row.new else "-"
            figures.append(f"{old} -> {new}" if row.old and row.new else (new if row.new else old))
        verdict = row.new.verdict if row.new else "-"
        body.append([row.key, verdict, *figures, status_text(row)])
    return _table(headers, body)
