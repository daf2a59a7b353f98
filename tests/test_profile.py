"""GradientProfile metrics on known profiles, and its lossless JSON round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import GradientProfile, InvalidArgumentError, ReportFormatError, probe


def geometric(rate: float, seq_len: int) -> GradientProfile:
    lags = np.arange(seq_len - 1, -1, -1)
    norms = rate**lags
    return GradientProfile(norms=norms, sample_norms=np.stack([norms, 2 * norms]), seq_len=seq_len)


def test_metrics_of_a_geometric_profile():
    profile = geometric(0.5, 11)
    assert profile.ratio == pytest.approx(0.5**10)
    assert profile.rate == pytest.approx(0.5)
    assert profile.half_life == pytest.approx(1.0)
    # 0.5^6 = 0.0156 >= 0.01 > 0.5^7
    assert profile.horizon(0.01) == 6
    assert profile.horizon(0.5) == 1
    assert profile.first_step_below(0.01) == 10 - 7


def test_growing_profile_has_infinite_half_life_and_full_horizon():
    profile = geometric(1.1, 8)
    assert profile.half_life == math.inf
    assert profile.horizon() == 7


def test_rate_ignores_underflowed_and_nonfinite_entries_and_flags_them():
    norms = 0.5 ** np.arange(5, -1, -1.0)
    norms[0] = 0.0
    norms[1] = np.inf
    profile = GradientProfile(norms=norms, sample_norms=norms[None], seq_len=6)
    assert profile.rate == pytest.approx(0.5)
    np.testing.assert_array_equal(profile.underflow_steps, [0])
    np.testing.assert_array_equal(profile.nonfinite_steps, [1])
    assert profile.ratio == 0.0


def test_horizon_threshold_is_validated():
    with pytest.raises(InvalidArgumentError, match="threshold must be a positive finite number, got -1"):
        geometric(0.5, 4).horizon(-1)


def test_json_round_trip_is_lossless_and_strict_json():
    profile = probe(nn.LSTM(3, 5, batch_first=True), 9, batch_size=2)
    profile.norms[2] = np.nan
    profile.sample_norms[0, 3] = np.inf
    profile.contributions = {"weight_hh_l0": np.array([1e-300, 0.1, -np.inf])}
    text = json.dumps(profile.to_dict(), allow_nan=False)
    restored = GradientProfile.from_dict(json.loads(text))
    np.testing.assert_array_equal(restored.norms, profile.norms)
    np.testing.assert_array_equal(restored.sample_norms, profile.sample_norms)
    np.testing.assert_array_equal(restored.contributions["weight_hh_l0"], profile.contributions["weight_hh_l0"])
    assert restored.to_dict() == profile.to_dict()
    assert restored.versions["torch"] == torch.__version__


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([1, 2], "must be a JSON object, got list"),
        ({"schema": 99}, "schema 99 is not supported"),
        ({"schema": 1, "seq_len": 3}, "missing steps, norms, sample_norms"),
        ({"schema": 1, "seq_len": 2, "steps": [0, 1], "norms": ["x", 1], "sample_norms": [[1, 1]]}, "norms: expected"),
        ({"schema": 1, "seq_len": 2, "steps": [0, 1], "norms": [1, 1, 1], "sample_norms": [[1, 1]]}, "aligned"),
    ],
)
def test_malformed_profile_data_names_what_is_wrong(data, words):
    with pytest.raises(ReportFormatError, match=words):
        GradientProfile.from_dict(data)


def test_metadata_describes_the_probe():
    model = nn.Sequential(nn.Embedding(30, 4), nn.GRU(4, 6, batch_first=True))
    profile = probe(model, 7, batch_size=3, seed=4, dtype="float64", name="tokens")
    assert (profile.name, profile.model, profile.seq_len, profile.batch_size, profile.seed) == (
        "tokens",
        "Sequential",
        7,
        3,
        4,
    )
    assert (profile.dtype, profile.device, profile.measure, profile.mode, profile.inputs) == (
        "float64",
        "cpu",
        "input",
        "eval",
        "tokens",
    )
    assert profile.sample_norms.shape == (3, 7)
