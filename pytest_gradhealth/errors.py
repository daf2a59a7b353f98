"""The library's own errors: one root, argument errors that are ValueError/TypeError, health failures that are
AssertionError (so pytest counts them as failed tests, not errors)."""

from __future__ import annotations

from typing import Any


class GradHealthError(Exception):
    """Root of every error raised by pytest-gradhealth."""


class InvalidArgumentError(GradHealthError, ValueError):
    """An argument has the right type but a value the library cannot use."""


class InvalidArgumentTypeError(GradHealthError, TypeError):
    """An argument has the wrong type."""


class ModelInterfaceError(GradHealthError, ValueError):
    """The model does not fit the probe's interface: its input or output is not what the probe can use."""


class DisconnectedGradientError(ModelInterfaceError):
    """The loss does not depend on the measured inputs at all (gradient None or exactly zero everywhere).

    This is not vanishing: no gradient path exists, so there is nothing to decay. `profile` holds the all-zero
    profile when one was measured, so a report can still show the probe.
    """

    profile: Any = None


class ModelForwardError(GradHealthError, RuntimeError):
    """The model raised inside its forward pass for a reason other than the shape of the probe's input."""


class ReportFormatError(GradHealthError, ValueError):
    """A saved profile, report or baseline is not in the format this version reads."""


class GradientHealthError(GradHealthError, AssertionError):
    """A gradient-health assertion failed: the model's gradient flow is outside the asked bounds."""


class UncertainVerdictError(GradientHealthError):
    """With `seeds=N`, the confidence interval of the checked figure straddles the threshold: some draws pass and
    some fail, so the data cannot say which side the model is on. An AssertionError like any failed check: an
    undecided verdict never passes a test; catch this class to tell it from a settled failure."""
