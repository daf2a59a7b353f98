"""pytest glue for pytest-gradhealth. Imported on every pytest run: it must not import torch or numpy."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("gradhealth", "gradient health of recurrent models (pytest-gradhealth)")
