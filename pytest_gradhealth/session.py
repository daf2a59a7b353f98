"""The controller's side of the plugin: collects the records that travel on test reports, then renders, exports,
saves, compares and plots them at the end of the session. Registered only when a --gradhealth* report option is given,
and never on an xdist worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gradhealth.report.gate import FailRule
from pytest_gradhealth.settings import Settings

if TYPE_CHECKING:
    from pytest_gradhealth.report.records import ProbeRecord

RECORD_NAME = "gradhealth"  # the user_properties name under which each measured profile travels


@dataclass
class ReportOptions:
    """What the user asked of the report on the command line."""

    table: bool = False
    json_path: Path | None = None
    save_path: Path | None = None
    overwrite: bool = False
    compare_path: Path | None = None
    fail_rules: list[FailRule] = field(default_factory=list)
    create_missing: bool = False
    references: bool = False
    plots_dir: Path | None = None
    plots_format: str = "png"

    @property
    def active(self) -> bool:
        return bool(self.table or self.json_path or self.save_path or self.compare_path or self.plots_dir)


class GradHealthSession:
    """Aggregates every test's records; at session finish writes files and sets the exit status; then prints."""

    def __init__(self, config: pytest.Config, options: ReportOptions, settings: Settings) -> None:
        self.config = config
        self.options = options
        self.settings = settings
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.lines: list[str] = []
        self.regressed = False

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        records: list[Any] = [value for name, value in report.user_properties if name == RECORD_NAME]
        if records or report.nodeid not in self.raw:
            self.raw[report.nodeid] = records  # a later phase's report carries all earlier records too

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from pytest_gradhealth.report import export, text
        from pytest_gradhealth.report.baseline import compare
        from pytest_gradhealth.report.records import ProbeRecord

        s = self.settings
        records = [
            ProbeRecord.from_raw(test, raw, s.min_ratio, s.max_ratio)
            for test in sorted(self.raw)
            for raw in self.raw[test]
        ]
        references = []
        if self.options.references:
            from pytest_gradhealth.report.references import measure_references

            references = measure_references(records, s.min_ratio, s.max_ratio)
        writer = self.config.get_terminal_writer()
        width, color, verbosity = writer.fullwidth, writer.hasmarkup, self.config.get_verbosity()
        if self.options.table:
            self.lines += text.render_table(records, width=width, verbosity=verbosity, color=color)
            self.lines += text.render_references(references, width=width)
        report = export.build_report(
            records, references, {"min_ratio": s.min_ratio, "max_ratio": s.max_ratio}, self.config.rootpath
        )
        if self.options.json_path:
            self._write(session, self.options.json_path, report, "report written to")
        compare_path = self.options.compare_path
        if compare_path and compare_path.exists():
            baseline = export.load_report(compare_path)
            rows = compare(baseline.records, records, self.options.fail_rules)
            self.lines += text.render_comparison(rows, str(compare_path), width=width, color=color)
            regressions = text.regression_line(rows)
            if regressions:
                self.regressed = True
                self.lines.append(f"{regressions}: failing the session")
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif compare_path:  # missing, and --gradhealth-create-missing was given (checked at start-up)
            self._write(session, compare_path, report, "baseline did not exist, written from this run to")
        if self.options.save_path:
            if session.exitstatus != pytest.ExitCode.OK:
                self.lines.append(
                    f"gradhealth: note: the session did not pass (exit status {int(session.exitstatus)}): probes of "
                    "tests that stopped before probing are missing from this baseline and will show as new later"
                )
            self._write(session, self.options.save_path, report, "baseline saved to")
        if self.options.plots_dir:
            self.lines.append(self._write_plots(records, references, self.options.plots_dir))

    def _write(self, session: pytest.Session, path: Path, report: dict[str, Any], done: str) -> None:
        """Write a report file; a failure becomes a line of the summary and a failed session, never a traceback."""
        from pytest_gradhealth.report.export import write_json

        try:
            write_json(path, report)
        except OSError as exc:
            self.lines.append(f"gradhealth: could not write {path}: {exc.strerror or exc}: failing the session")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self.lines.append(f"gradhealth: {done} {path}")

    def _write_plots(self, records: list[ProbeRecord], references: list[ProbeRecord], folder: Path) -> str:
        """Writes the figures; without matplotlib, says so in one line and leaves the session's outcome alone."""
        from pytest_gradhealth.report import plots

        try:
            files = plots.write_plots(records, references, folder, self.options.plots_format)
        except plots.MatplotlibMissingError as exc:
            return f"gradhealth: no plots written to {folder}: {exc}"
        if not files:
            return f"gradhealth: no probes were measured: no plots written to {folder}"
        return f"gradhealth: {len(files)} plots written to {folder} (one per probe and an overview)"

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("gradient health")
        for line in self.lines:
            terminalreporter.write_line(line)
