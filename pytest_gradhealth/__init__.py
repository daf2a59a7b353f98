"""pytest-gradhealth: measure and assert gradient flow through time in recurrent models.

The names below load lazily: pytest imports the plugin in every run, and the plugin must not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pytest_gradhealth.errors import (
    DisconnectedGradientError,
    GradHealthError,
    GradientHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ModelForwardError,
    ModelInterfaceError,
    ReportFormatError,
)

__version__ = "0.1.1"

_LAZY = {
    "probe": "pytest_gradhealth.probing",
    "GradientProfile": "pytest_gradhealth.profile",
    "assert_no_vanishing": "pytest_gradhealth.assertions",
    "assert_no_exploding": "pytest_gradhealth.assertions",
    "assert_finite_gradients": "pytest_gradhealth.assertions",
    "assert_memory_horizon": "pytest_gradhealth.assertions",
    "assert_no_worse_than": "pytest_gradhealth.assertions",
    "GradHealth": "pytest_gradhealth.fixture",
}

if TYPE_CHECKING:
    from pytest_gradhealth.assertions import (
        assert_finite_gradients,
        assert_memory_horizon,
        assert_no_exploding,
        assert_no_vanishing,
        assert_no_worse_than,
    )
    from pytest_gradhealth.fixture import GradHealth
    from pytest_gradhealth.probing import probe
    from pytest_gradhealth.profile import GradientProfile


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_gradhealth' has no attribute {name!r}")


__all__ = [
    "DisconnectedGradientError",
    "GradHealth",
    "GradHealthError",
    "GradientHealthError",
    "GradientProfile",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ModelForwardError",
    "ModelInterfaceError",
    "ReportFormatError",
    "__version__",
    "assert_finite_gradients",
    "assert_memory_horizon",
    "assert_no_exploding",
    "assert_no_vanishing",
    "assert_no_worse_than",
    "probe",
]
