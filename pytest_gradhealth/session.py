"""The controller's side of the plugin: collects the records that travel on test reports, follows how the run goes,
and at its end hands both to the report pipeline. Registered on every run that is not an xdist worker; it writes and
prints only when a report option was given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_gradhealth.report.options import ReportOptions
from pytest_gradhealth.settings import Settings

if TYPE_CHECKING:
    from pytest_gradhealth.report.pipeline import RunState

RECORD_NAME = "gradhealth"  # the user_properties name under which each measured profile travels
SELECTING = ("keyword", "markexpr", "deselect", "lf", "stepwise")  # options that run a part of the suite


class GradHealthSession:
    """Aggregates every test's records and what happened to every test; at session finish runs the report pipeline,
    sets the exit status, then prints its lines in the terminal summary."""

    def __init__(self, config: pytest.Config, options: ReportOptions, settings: Settings) -> None:
        self.config = config
        self.options = options
        self.settings = settings
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.ran: set[str] = set()
        self.failed: set[str] = set()
        self.collected: set[str] = set()
        self.deselected = False
        self.interrupted = ""
        self.lines: list[str] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Takes the records off the report (JUnit XML gets the short properties only) and notes the outcome."""
        records = [value for name, value in report.user_properties if name == RECORD_NAME]
        report.user_properties[:] = [(name, value) for name, value in report.user_properties if name != RECORD_NAME]
        if records or report.nodeid not in self.raw:
            self.raw[report.nodeid] = records  # a later phase's report carries all earlier records too
        if report.when == "call":
            self.ran.add(report.nodeid)
        if report.failed:
            self.failed.add(report.nodeid)

    @pytest.hookimpl
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected = self.deselected or bool(items)

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected.update(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected.update(ids)  # under xdist the workers collect; the controller hears their ids

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """An xdist worker that deselected tests (a conftest's pytest_deselected) says so when it goes down: the
        controller hears only the ids that remain, and would read the deselected tests' probes as removed."""
        self.deselected = self.deselected or bool(getattr(node, "workeroutput", {}).get(WORKER_DESELECTED))

    @pytest.hookimpl
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = f"interrupted ({excinfo.typename})"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.options.active:
            return
        from pytest_gradhealth.report.pipeline import Pipeline
        from pytest_gradhealth.report.records import ProbeRecord

        s = self.settings
        records = [
            ProbeRecord.from_raw(test, raw, s.min_ratio, s.max_ratio)
            for test in sorted(self.raw)
            for raw in self.raw[test]
        ]
        writer = self.config.get_terminal_writer()
        pipeline = Pipeline(
            self.options,
            {"min_ratio": s.min_ratio, "max_ratio": s.max_ratio},
            self.config.rootpath,
            width=writer.fullwidth,
            color=writer.hasmarkup,
            failing=": failing the session",
        )
        outcome = pipeline.run(records, self._state(session, exitstatus))
        self.lines = outcome.lines
        if outcome.failed and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # also when no test was collected: a CI reads 5 as a pass
        if exitstatus == pytest.ExitCode.INTERNAL_ERROR:  # pytest prints no terminal summary after one
            for line in self.lines:
                writer.line(line)

    def _state(self, session: pytest.Session, exitstatus: int) -> RunState:
        """How the session went, in the pipeline's terms."""
        from pytest_gradhealth.report.baseline import Scope
        from pytest_gradhealth.report.pipeline import RunState

        option = self.config.option
        selected = any(getattr(option, name, None) for name in SELECTING)
        full = not (selected or self.deselected or any("::" in arg for arg in self.config.args))
        interrupted = self.interrupted
        if not interrupted and exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
            interrupted = f"stopped with exit status {int(exitstatus)} ({pytest.ExitCode(exitstatus).name})"
        failed = ""
        if self.failed:
            failed = f"{len(self.failed)} test(s) failed or errored"
        elif session.shouldfail or session.shouldstop:
            failed = f"stopped early ({session.shouldfail or session.shouldstop})"
        elif exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            failed = f"exit status {int(exitstatus)}"
        rootpath = self.config.rootpath
        return RunState(
            scope=Scope(
                full=full,
                ran=frozenset(self.ran),
                collected=frozenset(self.collected),
                files=frozenset(test.split("::")[0] for test in self.collected),
            ),
            exists=lambda file: (rootpath / file).exists(),
            interrupted=interrupted,
            failed=failed,
            collect_only=bool(option.collectonly),
            missing=sorted(self.failed | (self.collected - self.ran)),
        )

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("gradient health")
        for line in self.lines:
            terminalreporter.write_line(line)


WORKER_DESELECTED = "gradhealth_deselected"


class WorkerDeselections:
    """On an xdist worker: notes in its output to the controller that it deselected tests."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if items:
            self.config.workeroutput[WORKER_DESELECTED] = True  # type: ignore[attr-defined]
