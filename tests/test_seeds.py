"""`seeds=N`: N independent draws pooled, medians over them, a confidence interval, per-seed profiles kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pytest_gradhealth import GradHealthError, probe, reference
from pytest_gradhealth.engine.factories import is_factory
from pytest_gradhealth.intervals import median_interval
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.schema import profile as check_profile


def test_each_draw_is_the_single_probe_of_its_seed_and_the_pool_is_their_samples(state_guard):
    model = state_guard(reference.lstm(4, 6))
    pooled = probe(model, 12, seeds=3, seed=5, batch_size=2)
    singles = [probe(model, 12, seed=s, batch_size=2) for s in (5, 6, 7)]
    for draw, single in zip(pooled.seed_profiles, singles, strict=True):
        np.testing.assert_array_equal(draw.norms, single.norms)
        assert draw.seed == single.seed
    np.testing.assert_array_equal(pooled.sample_norms, np.concatenate([s.sample_norms for s in singles]))
    np.testing.assert_allclose(pooled.norms, np.sqrt((pooled.sample_norms**2).mean(axis=0)), rtol=1e-15)
    assert (pooled.seeds, pooled.seed, pooled.batch_size) == (3, 5, 6)
    for name in ("ratio", "rate", "half_life", "lyapunov"):
        assert getattr(pooled, name) == float(np.median([getattr(s, name) for s in singles]))
    assert pooled.horizon() == int(np.median([s.horizon() for s in singles]))


def test_a_factory_builds_a_fresh_model_per_seed_under_that_seed_and_leaves_the_rng_alone():
    before = torch.get_rng_state().clone()
    pooled = probe(lambda: torch.nn.GRU(4, 6, batch_first=True), 10, seeds=2, seed=3)
    assert torch.equal(before, torch.get_rng_state())
    for seed, draw in zip((3, 4), pooled.seed_profiles, strict=True):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = probe(torch.nn.GRU(4, 6, batch_first=True), 10, seed=seed)
        np.testing.assert_array_equal(draw.norms, expected.norms)
    again = probe(lambda: torch.nn.GRU(4, 6, batch_first=True), 10, seeds=2, seed=3)
    np.testing.assert_array_equal(again.norms, pooled.norms)


def test_a_model_function_taking_the_input_is_not_a_factory():
    assert is_factory(lambda: None) and not is_factory(lambda x: x) and not is_factory(reference.rnn(2, 2))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"seeds": 0}, "seeds must be >= 1, got 0"),
        ({"seeds": 2.5}, "seeds must be an int, got float 2.5"),
        ({"seeds": 2, "seed": 2**64 - 1}, "seed \\+ seeds - 1 must be < 2\\*\\*64"),
    ],
)
def test_bad_seeds_are_refused_before_any_work(options, match):
    with pytest.raises(GradHealthError, match=match):
        probe(reference.rnn(3, 4), 6, **options)


def test_per_seed_profiles_round_trip_through_json_and_the_schema():
    pooled = probe(reference.rnn(3, 4), 6, seeds=3)
    data = pooled.to_dict()
    check_profile(data, "profile")
    loaded = GradientProfile.from_dict(data)
    assert loaded.seeds == 3 and len(loaded.seed_profiles) == 3
    assert loaded.rate == pooled.rate and loaded.interval("rate") == pooled.interval("rate")
    del data["seeds"], data["seed_profiles"]  # saved before the fields existed: one draw
    assert GradientProfile.from_dict(data).seed_profiles is None


def test_median_interval_is_the_order_statistic_interval_with_binomial_coverage():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 8.0, 7.0, 6.0]
    interval = median_interval(values)  # n = 8: [x_(2), x_(7)] covers 1 - 2*9/256 = 0.93 < 0.95, so [min, max]
    assert (interval.low, interval.high, interval.median) == (1.0, 8.0, 4.5)
    assert interval.coverage == pytest.approx(1 - 2 / 256)
    wide = median_interval(list(range(20)), level=0.95)  # n = 20: j = 6, coverage 1 - 2 P(B <= 5) = 0.9586
    assert (wide.low, wide.high) == (5.0, 14.0)
    assert wide.coverage == pytest.approx(1 - 2 * sum(math.comb(20, i) for i in range(6)) / 2**20)
    few = median_interval([1.0, 2.0, 3.0])  # too few for 95%: [min, max], and its coverage says so
    assert (few.low, few.high, few.coverage) == (1.0, 3.0, 0.75)


def test_interval_tells_a_settled_bound_from_one_it_straddles_and_how_many_seeds_would_settle_it():
    interval = median_interval([0.90, 0.92, 0.94, 0.96, 0.98, 1.00, 1.02, 1.04])  # median 0.97, half-width 0.07
    assert interval.straddles(1.0) and not interval.straddles(1.1)
    assert interval.seeds_to_settle(1.0) == math.ceil(8 * (0.07 / 0.03) ** 2)
    with pytest.raises(GradHealthError, match="level must be a number strictly between 0 and 1"):
        median_interval([1.0], level=95)


def test_the_ratio_interval_in_log10_holds_beyond_float64s_range():
    """A float32 tanh RNN over 2000 steps decays far below 1e-308: each seed's ratio reads 0, its log10 is measured."""
    profile = probe(lambda: torch.nn.RNN(8, 32, batch_first=True), 2000, seeds=3)
    plain, logs = profile.interval("ratio"), profile.interval("ratio", log10=True)
    assert plain.low == plain.high == 0.0
    per_seed = sorted(p.log10_ratio for p in profile.seed_profiles)
    assert per_seed[-1] < -308 and (logs.low, logs.median, logs.high) == (per_seed[0], per_seed[1], per_seed[2])
    in_range = probe(
        lambda: torch.nn.RNN(8, 32, batch_first=True), 20, seeds=3
    )  # where both exist: the same order statistics
    assert in_range.interval("ratio", log10=True).median == pytest.approx(math.log10(in_range.interval("ratio").median))
    with pytest.raises(GradHealthError, match=r"log10=True needs a metric with a log10 form \(ratio\), got 'rate'"):
        profile.interval("rate", log10=True)


def test_interval_of_a_single_draw_is_its_value():
    profile = probe(reference.rnn(3, 4), 6)
    interval = profile.interval("rate")
    assert interval.low == interval.high == profile.rate and interval.n == 1
    with pytest.raises(GradHealthError, match="metric must be one of ratio, rate"):
        profile.interval("slope")


def test_a_factory_is_probed_in_the_layout_of_the_model_it_builds():
    def time_major():
        return torch.nn.RNN(8, 32)  # PyTorch's default, batch_first=False

    profile = probe(time_major, 50, seeds=2)
    torch.manual_seed(0)  # the first draw's model, built under seed 0, probed on its own
    np.testing.assert_array_equal(profile.seed_profiles[0].norms, probe(time_major(), 50).norms)
    with pytest.raises(GradHealthError, match="seed must be an int"):  # checked before the factory runs
        probe(time_major, 50, seeds=2, seed="0")
