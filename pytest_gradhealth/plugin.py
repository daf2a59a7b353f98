"""pytest glue for pytest-gradhealth: options, ini keys, the marker, the fixture, and the recording of profiles.

Imported on every pytest run, also in suites that never use it: it must not import torch, numpy or tabulate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gradhealth.errors import InvalidArgumentError, ReportFormatError
from pytest_gradhealth.report import PLOT_FORMATS
from pytest_gradhealth.report.gate import parse_fail_rule
from pytest_gradhealth.session import RECORD_NAME, GradHealthSession, ReportOptions
from pytest_gradhealth.settings import HELP, MARKER_OPTIONS, Settings

if TYPE_CHECKING:
    from pytest_gradhealth.fixture import GradHealth
    from pytest_gradhealth.profile import GradientProfile

SETTINGS_KEY = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradhealth", "gradient health of recurrent models (pytest-gradhealth)")
    group.addoption(
        "--gradhealth", action="store_true", help="after the run, print a table of every probe measured in the session"
    )
    group.addoption(
        "--gradhealth-references",
        action="store_true",
        help="with the report, also probe the reference tanh RNN and LSTMs of each probed model's sizes",
    )
    group.addoption("--gradhealth-json", metavar="PATH", help="write the whole report as JSON to PATH")
    group.addoption(
        "--gradhealth-save", metavar="PATH", help="save this session's profiles as a baseline (refuses to overwrite)"
    )
    group.addoption(
        "--gradhealth-overwrite", action="store_true", help="allow --gradhealth-save to replace an existing baseline"
    )
    group.addoption(
        "--gradhealth-compare", metavar="PATH", help="compare this session's profiles with the baseline at PATH"
    )
    group.addoption(
        "--gradhealth-compare-fail",
        metavar="EXPR",
        action="append",
        default=[],
        help="fail the session when a probe regressed past EXPR: ratio:10x, half_life:20%%, horizon:5 (repeatable)",
    )
    group.addoption(
        "--gradhealth-plots",
        metavar="DIR",
        help="write a figure per probe and an overview of them all to DIR (needs the extra pytest-gradhealth[plot])",
    )
    group.addoption(
        "--gradhealth-plots-format",
        choices=PLOT_FORMATS,
        default=None,
        help="file format of --gradhealth-plots: png (default) or svg",
    )
    group.addoption(
        "--gradhealth-create-missing",
        action="store_true",
        help="when the --gradhealth-compare baseline does not exist, write it from this run instead of stopping",
    )
    for key, text in HELP.items():
        group.addoption(f"--gradhealth-{key.replace('_', '-')}", dest=f"gradhealth_{key}", default=None, help=text)
        parser.addini(f"gradhealth_{key}", text, default=None)


def pytest_configure(config: pytest.Config) -> None:
    keys = ", ".join([*HELP, *MARKER_OPTIONS])
    config.addinivalue_line("markers", f"gradhealth(**settings): per-test gradient-health settings ({keys})")
    ini = {key: config.getini(f"gradhealth_{key}") for key in HELP}
    options = {key: config.getoption(f"gradhealth_{key}") for key in HELP}
    try:
        settings = Settings().merged({k: v for k, v in ini.items() if v not in (None, "")}, "ini file")
        settings = settings.merged({k: v for k, v in options.items() if v is not None}, "command line")
        report_options = _report_options(config)
    except (InvalidArgumentError, ReportFormatError) as exc:
        raise pytest.UsageError(f"pytest-gradhealth: {exc}") from None
    config.stash[SETTINGS_KEY] = settings
    if report_options.active and not hasattr(config, "workerinput"):  # xdist workers print and write nothing
        config.pluginmanager.register(GradHealthSession(config, report_options, settings), "gradhealth-session")


def _path(config: pytest.Config, name: str) -> Path | None:
    value = config.getoption(name)
    return None if value is None else Path(config.invocation_params.dir, value)


def _check_file_target(flag: str, path: Path | None) -> None:
    """A file can be written at `path`: it is no folder, and no file stands where a folder above it must be."""
    if path is None:
        return
    if path.is_dir():
        raise InvalidArgumentError(
            f"{flag}: {path} is a folder; give the path of a file, e.g. {path / 'gradhealth.json'}"
        )
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InvalidArgumentError(f"{flag}: cannot write {path}: {blocker} is a file, not a folder")


def _report_options(config: pytest.Config) -> ReportOptions:
    """The report options, checked before any test runs: no baseline is overwritten or missed by accident."""
    options = ReportOptions(
        table=config.getoption("gradhealth"),
        json_path=_path(config, "gradhealth_json"),
        save_path=_path(config, "gradhealth_save"),
        overwrite=config.getoption("gradhealth_overwrite"),
        compare_path=_path(config, "gradhealth_compare"),
        fail_rules=[parse_fail_rule(text) for text in config.getoption("gradhealth_compare_fail")],
        create_missing=config.getoption("gradhealth_create_missing"),
        references=config.getoption("gradhealth_references"),
        plots_dir=_path(config, "gradhealth_plots"),
        plots_format=config.getoption("gradhealth_plots_format") or PLOT_FORMATS[0],
    )
    for flag, path in (
        ("--gradhealth-json", options.json_path),
        ("--gradhealth-save", options.save_path),
        ("--gradhealth-compare", options.compare_path),
    ):
        _check_file_target(flag, path)
    if options.save_path and options.save_path.exists() and not options.overwrite:
        raise InvalidArgumentError(
            f"--gradhealth-save: {options.save_path} exists and would be overwritten; add --gradhealth-overwrite to "
            "replace it, or save to another path"
        )
    if options.fail_rules and not options.compare_path:
        raise InvalidArgumentError("--gradhealth-compare-fail needs --gradhealth-compare=BASELINE to compare with")
    if config.getoption("gradhealth_plots_format") and not options.plots_dir:
        raise InvalidArgumentError("--gradhealth-plots-format needs --gradhealth-plots=DIR to write the plots to")
    if options.plots_dir and options.plots_dir.exists() and not options.plots_dir.is_dir():
        raise InvalidArgumentError(f"--gradhealth-plots: {options.plots_dir} is a file, not a folder to write plots in")
    if options.plots_dir:
        _check_file_target("--gradhealth-plots", options.plots_dir / "plot")
    if options.compare_path:
        if options.compare_path.exists():
            from pytest_gradhealth.report.export import load_report

            load_report(options.compare_path)  # a corrupt baseline stops the session before any test runs
        elif not options.create_missing:
            raise InvalidArgumentError(
                f"--gradhealth-compare: baseline {options.compare_path} does not exist; create it with "
                f"--gradhealth-save={config.getoption('gradhealth_compare')}, or add --gradhealth-create-missing to "
                "write it from this run"
            )
    return options


def _item_settings(item: pytest.Item) -> Settings:
    settings = item.config.stash[SETTINGS_KEY]
    for mark in reversed(list(item.iter_markers(RECORD_NAME))):  # farthest first: the closest marker wins
        source = f"{item.nodeid}: @pytest.mark.gradhealth"
        if mark.args:
            raise InvalidArgumentError(f"{source} takes keyword arguments only, got positional {mark.args!r}")
        settings = settings.with_marker(mark.kwargs, source)
    return settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            _item_settings(item)
        except InvalidArgumentError as exc:
            raise pytest.UsageError(str(exc)) from None


@pytest.fixture
def gradhealth(request: pytest.FixtureRequest) -> GradHealth:
    """Probe and gradient-health assertions with this session's defaults and the test's marker applied."""
    from pytest_gradhealth.fixture import GradHealth

    return GradHealth(_item_settings(request.node))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Record every profile measured while the test runs on its report, as plain data that travels under xdist."""
    from pytest_gradhealth.recording import observe

    seen: Counter[str] = Counter()

    def record(profile: GradientProfile, check: dict[str, Any] | None) -> None:
        seen[profile.name] += 1
        name = profile.name if seen[profile.name] == 1 else f"{profile.name}#{seen[profile.name]}"
        item.user_properties.append((RECORD_NAME, {"probe": name, "profile": profile.to_dict(), "check": check}))

    with observe(record):
        yield
