"""The `gradhealth` fixture's value: `probe` and every assertion with the session's settings applied."""

from __future__ import annotations

from typing import Any

from pytest_gradhealth import assertions
from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.probing import probe
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.settings import Settings


class GradHealth:
    """Probe and assert with the defaults configured for this test (marker > options > ini > built-ins).

    Arguments given to a method win over every configured default.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        defaults = self.settings.probe_options()
        if any(options.get(key) is not None for key in ("inputs", "lengths")):
            del defaults["batch_size"]  # the batch is the given one
        return {**defaults, **options}

    def _seq_len(self, seq_len: int | None) -> int:
        return self.settings.seq_len if seq_len is None else seq_len

    def probe(self, model: Any, seq_len: int | None = None, **options: Any) -> GradientProfile:
        """`pytest_gradhealth.probe` with the configured seq_len, batch_size, seed, device and dtype."""
        return probe(model, self._seq_len(seq_len), **self._options(options))

    def assert_no_vanishing(
        self, model: Any, seq_len: int | None = None, min_ratio: float | None = None, **options: Any
    ) -> GradientProfile:
        """`assert_no_vanishing` with the configured min_ratio unless one is given."""
        __tracebackhide__ = True
        bound = self.settings.min_ratio if min_ratio is None else min_ratio
        return assertions.assert_no_vanishing(model, self._seq_len(seq_len), bound, **self._options(options))

    def assert_no_exploding(
        self, model: Any, seq_len: int | None = None, max_ratio: float | None = None, **options: Any
    ) -> GradientProfile:
        """`assert_no_exploding` with the configured max_ratio unless one is given."""
        __tracebackhide__ = True
        bound = self.settings.max_ratio if max_ratio is None else max_ratio
        return assertions.assert_no_exploding(model, self._seq_len(seq_len), bound, **self._options(options))

    def assert_finite_gradients(self, model: Any, seq_len: int | None = None, **options: Any) -> GradientProfile:
        """`assert_finite_gradients` with the configured defaults."""
        __tracebackhide__ = True
        return assertions.assert_finite_gradients(model, self._seq_len(seq_len), **self._options(options))

    def assert_memory_horizon(
        self,
        model: Any,
        seq_len: int | None = None,
        min_steps: int | None = None,
        threshold: float = 0.01,
        **options: Any,
    ) -> GradientProfile:
        """`assert_memory_horizon`; `min_steps` is required."""
        __tracebackhide__ = True
        if min_steps is None:
            raise InvalidArgumentError("assert_memory_horizon needs min_steps=, the horizon to require")
        return assertions.assert_memory_horizon(
            model, self._seq_len(seq_len), min_steps, threshold, **self._options(options)
        )

    def assert_no_worse_than(
        self, model: Any, reference: Any, seq_len: int | None = None, factor: float = 10.0, **options: Any
    ) -> GradientProfile:
        """`assert_no_worse_than` with the configured defaults applied to both probes."""
        __tracebackhide__ = True
        return assertions.assert_no_worse_than(
            model, reference, self._seq_len(seq_len), factor, **self._options(options)
        )

    def __repr__(self) -> str:
        return f"GradHealth({self.settings})"
