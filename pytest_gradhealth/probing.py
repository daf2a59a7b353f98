"""The probe's public entry points, where the rest of the package imports them from (the engine is `engine/`)."""

from pytest_gradhealth.engine.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    MEASURES,
    MODES,
    ProbeOptions,
    make_options,
)
from pytest_gradhealth.engine.probe import measure, measure_profile, probe, run_probe

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEED",
    "MEASURES",
    "MODES",
    "ProbeOptions",
    "make_options",
    "measure",
    "measure_profile",
    "probe",
    "run_probe",
]
