"""pytest glue for pytest-gradhealth: options, ini keys, the marker, the fixture, and the recording of profiles.

Imported on every pytest run, also in suites that never use it: it must not import torch, numpy or tabulate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.settings import HELP, MARKER_OPTIONS, Settings

if TYPE_CHECKING:
    from pytest_gradhealth.fixture import GradHealth
    from pytest_gradhealth.profile import GradientProfile

SETTINGS_KEY = pytest.StashKey[Settings]()
RECORD_NAME = "gradhealth"  # the user_properties name under which each measured profile travels


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradhealth", "gradient health of recurrent models (pytest-gradhealth)")
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
    except InvalidArgumentError as exc:
        raise pytest.UsageError(f"pytest-gradhealth: {exc}") from None
    config.stash[SETTINGS_KEY] = settings


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
