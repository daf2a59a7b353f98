"""Profile metrics at the limits of float64: extreme profiles, half-lives beyond the sequence."""

from __future__ import annotations

import math

import numpy as np

from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report.baseline import metric


def test_rate_of_an_extreme_profile_is_infinite_not_an_overflow():
    profile = GradientProfile(norms=np.array([1e300, 1e-300]), sample_norms=np.array([[1e300, 1e-300]]), seq_len=2)
    assert profile.rate == math.inf and profile.half_life == math.inf


def test_half_life_beyond_the_sequence_compares_as_the_sequence_length():
    lags = np.arange(99, -1, -1.0)
    slow = GradientProfile(norms=1.001**lags, sample_norms=(1.001**lags)[None], seq_len=100)
    assert slow.half_life == math.inf and metric(slow, "half_life") == 100.0
