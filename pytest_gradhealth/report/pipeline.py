"""One report pipeline for both front ends: records in; table, JSON, baseline compare and save, Markdown and plots
out; an `Outcome` with the lines to print and whether the run fails.

The pytest session and the `gradhealth` command each describe how their run ended (`RunState`) and print the lines;
every rule (what is compared, when a baseline may be written) lives here once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gradhealth.errors import ReportFormatError
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
    unwritten: str = field(default="", init=False)  # an output that could not be written: no baseline is saved

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
            lines += text.render_diagnoses(records) if options.verbosity > 0 else []
        needed = options.json_path or options.save_path or (options.compare_path and options.baseline is None)
        report = export.build_report(records, references, self.limits, self.folder, state.scope) if needed else {}
        if options.json_path:
            self._write(options.json_path, report, "report written to")
        rows = self._compare(records, state)
        gate_failed = any(row.failed for row in rows or ())
        if options.markdown_path:
            markdown = render_markdown(records, rows, str(options.compare_path) if rows is not None else None)
            self._write(options.markdown_path, "\n".join(markdown) + "\n", "Markdown summary written to")
        for path, done, replace in self._baselines():  # last: after every output that may fail the run
            self._save(path, done, replace, report, records, state, gate_failed)
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

    def _baselines(self) -> list[tuple[Path, str, bool]]:
        """The baselines to write, each with whether it may replace a file: the one --create-missing asked for
        (never: it did not exist when the run started), and the one --save asked for."""
        options, targets = self.options, []
        if options.compare_path and options.baseline is None:  # missing, and create-missing was given
            targets.append((options.compare_path, "baseline did not exist, written from this run to", False))
        if options.save_path and not (targets and _same_path(options.save_path, targets[0][0])):  # written once
            targets.append((options.save_path, "baseline saved to", options.overwrite))
        return targets

    def _save(
        self,
        path: Path,
        done: str,
        replace: bool,
        report: dict[str, Any],
        records: Sequence[ProbeRecord],
        state: RunState,
        gate_failed: bool,
    ) -> None:
        """Write the baseline `path` unless this run may not (`_refusal`); replacing one whose probes of tests this
        run did not run would be lost is refused too, and fails the run, unless --save-partial."""
        failed = state.failed or ("the gate failed" if gate_failed else "") or self.unwritten
        refused = self._refusal(path, records, state, gate_failed, failed)
        dropped = [] if refused or not replace else self._dropped(path, records, state)
        if dropped and not self.options.save_partial:
            refused = (
                f"it holds probes of {len(dropped)} test(s) this run did not run{_listed(dropped)}; saving would drop "
                f"them: run every test, or add {self.options.flag('save-partial')} to save only what was measured"
                f"{self.failing}"
            )
            self.outcome.failed = True
        if refused:
            self.outcome.lines.append(f"gradhealth: baseline not saved to {path}: {refused}")
        elif self._write(path, report, done, replace=replace) and (failed or dropped):
            missing = sorted({*map(text.printable, state.missing), *dropped})
            self.outcome.lines.append(
                f"gradhealth: note: this baseline is partial ({failed or 'a part of the suite ran'}): probes of "
                f"{len(missing)} test(s) that failed or did not run are missing and will show as new later"
                f"{_listed(missing)}"
            )

    def _refusal(
        self, path: Path, records: Sequence[ProbeRecord], state: RunState, gate_failed: bool, failed: str
    ) -> str:
        """Why no baseline may be written to `path` from this run (`failed`: why the run failed); empty when it may."""
        options = self.options
        if state.collect_only:
            return "--collect-only runs no test"
        if state.interrupted:
            return f"the session was {state.interrupted}: an interrupted run never replaces a baseline"
        if gate_failed and options.compare_path and same_file(path, options.compare_path):
            return "the gate failed against it: a failing gate never rewrites the baseline it failed against"
        if failed and not options.save_partial:
            return (
                f"{failed}: a baseline is saved only from a passing run; add {options.flag('save-partial')} to save "
                "what was measured"
            )
        if not records:
            return "no probe was measured: a baseline with no probes is never written"
        return ""

    @staticmethod
    def _dropped(path: Path, records: Sequence[ProbeRecord], state: RunState) -> list[str]:
        """The tests whose probes the baseline at `path` holds and this run did not run (deselected, skipped, not
        reached), which replacing it would drop; none when `path` holds no readable report."""
        try:
            old = export.load_report(path)
        except ReportFormatError:
            return []
        rows = compare(old.records, records, [], state.scope, state.exists)
        return sorted({text.printable(row.old.test) for row in rows if row.old and row.status == "not run"})

    def _write(self, path: Path, data: Any, done: str, *, replace: bool = True) -> bool:
        """Write a file, over an existing one only if `replace`; a failure becomes a line of the summary and a failed
        run, never a traceback."""
        try:
            if isinstance(data, str):
                export.write_text(path, data, replace=replace)
            else:
                export.write_json(path, data, replace=replace)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError) and not replace:
                why = (
                    "it exists now, created while this run went on, and is not replaced (only "
                    f"{self.options.flag('save')} with {self.options.flag('overwrite')} replaces a file)"
                )
            self.outcome.lines.append(f"gradhealth: could not write {path}: {why}{self.failing}")
            self.outcome.failed = True
            self.unwritten = self.unwritten or f"{path} could not be written"
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


def _listed(items: Sequence[str]) -> str:
    """The items after a colon, five at most (": a, b, ..."); empty for none."""
    return f": {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}" if items else ""


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file, which may not exist yet."""
    return os.path.realpath(a) == os.path.realpath(b)
