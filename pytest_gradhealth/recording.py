"""Where measured profiles go: observers registered here (the pytest plugin, a CLI) receive every probe's record.

The core stays free of pytest: the plugin registers an observer for the duration of each test. Importing this
module loads neither torch nor numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_gradhealth.profile import GradientProfile

Observer = Callable[["GradientProfile", "dict[str, Any] | None"], None]

_observers: list[Observer] = []


def emit(profile: GradientProfile, check: dict[str, Any] | None = None) -> None:
    """Hand a measured profile (and the check applied to it, if any) to every registered observer."""
    for observer in list(_observers):
        observer(profile, check)


@contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Register `observer` for the duration of the block."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


class Recorder:
    """Names the probes of one test and hands each one's plain record (and the profile it holds) to `sink`.

    The one naming rule of every front end: a probe is named by its profile's name, and a name measured again in the
    same test gets #2, #3, ... So a report of `gradhealth probe` and one of a pytest session name probes alike.
    """

    def __init__(self, sink: Callable[[dict[str, Any], GradientProfile], None]) -> None:
        self.sink = sink
        self.seen: dict[str, int] = {}

    def __call__(self, profile: GradientProfile, check: dict[str, Any] | None) -> None:
        count = self.seen[profile.name] = self.seen.get(profile.name, 0) + 1
        name = profile.name if count == 1 else f"{profile.name}#{count}"
        self.sink({"probe": name, "profile": profile.to_dict(), "check": check}, profile)
