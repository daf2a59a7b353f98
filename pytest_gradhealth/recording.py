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
