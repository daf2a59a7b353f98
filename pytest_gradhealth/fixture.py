"""The `gradhealth` fixture's value: `probe` and every assertion with the session's settings applied."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pytest_gradhealth import assertions, diagnosing, probing
from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.settings import Settings


def _forward(function: Callable[..., GradientProfile], bound: str | None = None) -> Callable[..., GradientProfile]:
    """A method that calls `function` with the configured seq_len and probe options, and the setting `bound` for the
    argument of the same name, each where the test gives none. Arguments given to the method win."""
    signature = inspect.signature(function)
    named = [name for name, p in signature.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]

    def method(self: GradHealth, *args: Any, **kwargs: Any) -> GradientProfile:
        __tracebackhide__ = True
        arguments = signature.bind_partial(*args, **kwargs).arguments
        given = {name: arguments.pop(name, None) for name in named}
        given = {name: value for name, value in given.items() if value is not None}
        options = {**arguments.pop("options", {}), **arguments}  # an assertion's **options, or probe's keywords
        given.setdefault("seq_len", self.settings.seq_len)
        if bound is not None:
            given.setdefault(bound, getattr(self.settings, bound))
        if "explain" in named:
            given.setdefault("explain", self.settings.explain)
        missing = [name for name in named if name not in given and signature.parameters[name].default is _EMPTY]
        if missing:
            raise InvalidArgumentError(f"{function.__name__} needs {missing[0]}=, {_NEEDS.get(missing[0], 'a value')}")
        return function(**given, **self._options(options))

    parameters, defaulted = [], False  # seq_len, the bound, explain: the settings; later ones: None
    for p in signature.parameters.values():
        defaulted = defaulted or p.name in ("seq_len", bound)
        from_settings = p.name in (bound, "explain")
        needs_default = defaulted and p.kind is p.POSITIONAL_OR_KEYWORD and (p.default is _EMPTY or from_settings)
        parameters.append(p.replace(default=None) if needs_default else p)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(parameters=[self_parameter, *parameters])  # type: ignore[attr-defined]
    method.__name__ = function.__name__
    method.__doc__ = f"`{function.__name__}` with the configured defaults" + (
        f" and the configured {bound} unless one is given." if bound else "."
    )
    return method


_EMPTY = inspect.Parameter.empty
_NEEDS = {"min_steps": "the horizon to require", "model": "the model to probe", "reference": "what to compare with"}


class GradHealth:
    """Probe and assert with the defaults configured for this test (marker > options > ini > built-ins).

    Each method takes the arguments of the function of the same name in `pytest_gradhealth`; seq_len may be left
    out. Arguments given to a method win over every configured default.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        defaults = self.settings.probe_options()
        if any(options.get(key) is not None for key in ("inputs", "lengths")):
            del defaults["batch_size"]  # the batch is the given one
        return {**defaults, **options}

    # the forwarding table: each public function, and the setting that fills its bound
    probe = _forward(probing.probe)
    assert_no_vanishing = _forward(assertions.assert_no_vanishing, "min_ratio")
    assert_no_exploding = _forward(assertions.assert_no_exploding, "max_ratio")
    assert_finite_gradients = _forward(assertions.assert_finite_gradients)
    assert_memory_horizon = _forward(assertions.assert_memory_horizon)
    assert_no_worse_than = _forward(assertions.assert_no_worse_than)
    diagnose = _forward(diagnosing.diagnose)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"GradHealth({self.settings})"
