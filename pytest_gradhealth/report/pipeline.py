"""One report pipeline for both front ends: records in; table, JSON, baseline compare and save, Markdown and plots
out; an `Outcome` with the lines to print and whether the run fails.

The pytest session and the `gradhealth` command each describe how their run ended (`RunState`) and print the lines;
every rule (what is compared, when a baseline may be written) lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gradhealth.report import export, text
from pytest_gradhealth.report.baseline import Comparison, Scope, compare
from pytest_gradhealth.report.markdown import render_markdown
from pytest_gradhealth.report.options import ReportOptions, same_file
from pytest_gradhealth.report.records import ProbeRecord


@dataclass
class RunState:
    """How the run that measured the records went: what it covered, and why it did not pass, if it did not."""

    scope: Scope = field(default_factory=Scope)
    exists: Callable[[str], bool] = lambda file: True  # whether a test file still exists
    interrupted: str = ""  # why it stopped in a way that never saves: "interrupted (KeyboardInterrupt)"
    failed: str = ""  # why it did not pass: "2 tests failed or errored"
    collect_only: bool = False
    missing: Sequence[str] = ()  # the tests whose probes may be missing: failed, errored, not run


@dataclass
class Outcome:
    """What the pipeline did: lines to print, and whether the run fails (a gate, or a file that was not written)."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False
    references: list[ProbeRecord] = field(default_factory=list)  # the reference models shown beside the records


@dataclass
class Pipeline:
    """Runs the outputs `options` asks for over `records`; `failing` is the front end's words for a failed run."""

    options: ReportOptions
    limits: dict[str, float]
    folder: Path
    width: int = 120
    color: bool = False
    failing: str = ""
    outcome: Outcome = field(default_factory=Outcome)

    def run(self, records: Sequence[ProbeRecord], state: RunState, references: Sequence[ProbeRecord] = ()) -> Outcome:
        """Every output asked for; `references` are shown unless the options ask to measure them afresh."""
        options, lines = self.options, self.outcome.lines
        if options.references:
            from pytest_gradhealth.report.references import measure_references  # probes: torch

            references = measure_references(records, self.limits["min_ratio"], self.limits["max_ratio"])
        self.outcome.references = list(references)
        if options.table:
            lines += text.render_table(records, width=self.width, verbosity=options.verbosity, color=self.color)
            lines += text.render_references(references, width=self.width)
        needed = options.json_path or options.save_path or (options.compare_path and options.baseline is None)
        report = export.build_report(records, references, self.limits, self.folder, state.scope) if needed else {}
        if options.json_path:
            self._write(options.json_path, report, "report written to")
        rows = self._compare(records, state)
        gate_failed = any(row.failed for row in rows or ())
        for path, done in self._baselines():
            refused = self._refusal(path, records, state, gate_failed)
            if refused:
                lines.append(f"gradhealth: baseline not saved to {path}: {refused}")
            elif self._write(path, report, done) and (state.failed or gate_failed):
                lines.append(self._partial_note(state))
        if options.markdown_path:
            markdown = render_markdown(records, rows, str(options.compare_path) if rows is not None else None)
            self._write(options.markdown_path, "\n".join(markdown) + "\n", "Markdown summary written to")
        if options.plots_dir:
            lines.append(self._plots(records, references, options.plots_dir))
        return self.outcome

    def _compare(self, records: Sequence[ProbeRecord], state: RunState) -> list[Comparison] | None:
        """The comparison with the baseline read when the run started; its failures fail the run."""
        baseline = self.options.baseline
        if baseline is None:
            return None
        rows = compare(baseline.records, records, self.options.fail_rules, state.scope, state.exists)
        self.outcome.lines += text.render_comparison(
            rows, str(self.options.compare_path), width=self.width, color=self.color
        )
        for line in text.gate_lines(rows):
            self.outcome.lines.append(f"{line}{self.failing}")
            self.outcome.failed = True
        return rows

    def _baselines(self) -> list[tuple[Path, str]]:
        """The baselines to write: the one --create-missing asked for, and the one --save asked for."""
        options, targets = self.options, []
        if options.compare_path and options.baseline is None:  # missing, and create-missing was given
            targets.append((options.compare_path, "baseline did not exist, written from this run to"))
        if options.save_path:
            targets.append((options.save_path, "baseline saved to"))
        return targets

    def _refusal(self, path: Path, records: Sequence[ProbeRecord], state: RunState, gate_failed: bool) -> str:
        """Why no baseline may be written to `path` from this run; empty when it may."""
        options = self.options
        if state.collect_only:
            return "--collect-only runs no test"
        if state.interrupted:
            return f"the session was {state.interrupted}: an interrupted run never replaces a baseline"
        if gate_failed and options.compare_path and same_file(path, options.compare_path):
            return "the gate failed against it: a failing gate never rewrites the baseline it failed against"
        if (state.failed or gate_failed) and not options.save_partial:
            why = state.failed or "the gate failed"
            return (
                f"{why}: a baseline is saved only from a passing run; add {options.flag('save-partial')} to save "
                "what was measured"
            )
        if not records:
            return "no probe was measured: a baseline with no probes is never written"
        return ""

    def _partial_note(self, state: RunState) -> str:
        missing = [text.printable(test) for test in state.missing]
        listed = f": {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}" if missing else ""
        return (
            f"gradhealth: note: this baseline is partial ({state.failed or 'the gate failed'}): probes of "
            f"{len(missing)} test(s) that failed or did not run are missing and will show as new later{listed}"
        )

    def _write(self, path: Path, data: Any, done: str) -> bool:
        """Write a file; a failure becomes a line of the summary and a failed run, never a traceback."""
        try:
            if isinstance(data, str):
                export.write_text(path, data)
            else:
                export.write_json(path, data)
        except OSError as exc:
            self.outcome.lines.append(f"gradhealth: could not write {path}: {exc.strerror or exc}{self.failing}")
            self.outcome.failed = True
            return False
        self.outcome.lines.append(f"gradhealth: {done} {path}")
        return True

    def _plots(self, records: Sequence[ProbeRecord], references: Sequence[ProbeRecord], folder: Path) -> str:
        """Writes the figures; without matplotlib, says so in one line and leaves the outcome alone."""
        from pytest_gradhealth.report import plots

        try:
            files = plots.write_plots(records, references, folder, self.options.plots_format)
        except plots.MatplotlibMissingError as exc:
            return f"gradhealth: no plots written to {folder}: {exc}"
        if not files:
            return f"gradhealth: no probes were measured: no plots written to {folder}"
        return f"gradhealth: {len(files)} plots written to {folder} (one per probe and an overview)"
