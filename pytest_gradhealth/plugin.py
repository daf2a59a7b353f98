"""pytest glue for pytest-gradhealth: options, ini keys, the marker, the fixture, and the recording of profiles.

Imported on every pytest run, also in suites that never use it: it must not import torch, numpy or tabulate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gradhealth.errors import InvalidArgumentError, ReportFormatError
from pytest_gradhealth.report.options import ReportOptions, add_report_options
from pytest_gradhealth.session import RECORD_NAME, GradHealthSession, WorkerDeselections
from pytest_gradhealth.settings import HELP, MARKER_OPTIONS, Settings

if TYPE_CHECKING:
    from pytest_gradhealth.fixture import GradHealth
    from pytest_gradhealth.profile import GradientProfile

SETTINGS_KEY = pytest.StashKey[Settings]()
PREFIX = "gradhealth-"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradhealth", "gradient health of recurrent models (pytest-gradhealth)")
    group.addoption(
        "--gradhealth", action="store_true", help="after the run, print a table of every probe measured in the session"
    )
    add_report_options(group.addoption, PREFIX)
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
        report_options = ReportOptions.read(
            config.getoption,
            config.invocation_params.dir,
            PREFIX,
            table=config.getoption("gradhealth"),
            verbosity=config.get_verbosity(),
        )
        if not hasattr(config, "workerinput"):  # xdist workers read no baseline and write nothing
            report_options.check(plots_format_given=config.getoption("gradhealth_plots_format") is not None)
    except (InvalidArgumentError, ReportFormatError) as exc:
        raise pytest.UsageError(f"pytest-gradhealth: {' '.join(str(exc).split())}") from None
    config.stash[SETTINGS_KEY] = settings
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(GradHealthSession(config, report_options, settings), "gradhealth-session")
    else:
        config.pluginmanager.register(WorkerDeselections(config), "gradhealth-worker-deselections")


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
    """Record every profile measured while the test runs on its report: as plain data that travels under xdist, and
    as short `gradhealth.<probe>.<figure>` properties that JUnit XML shows."""
    from pytest_gradhealth.recording import Recorder, observe
    from pytest_gradhealth.report.records import ProbeRecord

    settings = item.config.stash[SETTINGS_KEY]

    def sink(raw: dict[str, Any], profile: GradientProfile) -> None:
        item.user_properties.append((RECORD_NAME, raw))
        record = ProbeRecord.from_raw(item.nodeid, raw, settings.min_ratio, settings.max_ratio, profile)
        item.user_properties.extend(record.junit_properties())

    with observe(Recorder(sink)):
        yield
