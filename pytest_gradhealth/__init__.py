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
    UncertainVerdictError,
)

__version__ = "0.1.1"

# The public names that need torch or numpy, each listed once with its module: loaded on first use.
_LAZY = {
    "pytest_gradhealth.probing": ("probe",),
    "pytest_gradhealth.profile": ("GradientProfile",),
    "pytest_gradhealth.assertions": (
        "assert_finite_gradients",
        "assert_memory_horizon",
        "assert_no_exploding",
        "assert_no_vanishing",
        "assert_no_worse_than",
    ),
    "pytest_gradhealth.fixture": ("GradHealth",),
    "pytest_gradhealth.diagnosing": ("diagnose",),
    "pytest_gradhealth.diagnosis": ("Diagnosis",),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:  # what type checkers see of _LAZY (explicit re-exports); a test checks that the two agree
    from pytest_gradhealth.assertions import assert_finite_gradients as assert_finite_gradients
    from pytest_gradhealth.assertions import assert_memory_horizon as assert_memory_horizon
    from pytest_gradhealth.assertions import assert_no_exploding as assert_no_exploding
    from pytest_gradhealth.assertions import assert_no_vanishing as assert_no_vanishing
    from pytest_gradhealth.assertions import assert_no_worse_than as assert_no_worse_than
    from pytest_gradhealth.diagnosing import diagnose as diagnose
    from pytest_gradhealth.diagnosis import Diagnosis as Diagnosis
    from pytest_gradhealth.fixture import GradHealth as GradHealth
    from pytest_gradhealth.probing import probe as probe
    from pytest_gradhealth.profile import GradientProfile as GradientProfile


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'pytest_gradhealth' has no attribute {name!r}")


__all__ = [  # the errors imported above, then the lazy names
    "DisconnectedGradientError",
    "GradHealthError",
    "GradientHealthError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ModelForwardError",
    "ModelInterfaceError",
    "ReportFormatError",
    "UncertainVerdictError",
    "__version__",
    *_MODULE_OF,
]
