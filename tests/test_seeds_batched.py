"""`seeds=N` on an nn.Module runs every seed's inputs as one batch, each seed's v on its rows: the per-seed profiles
equal the one-seed-at-a-time ones, and whatever cannot be batched runs one seed after another."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe, reference
from pytest_gradhealth.engine import seeds
from pytest_gradhealth.probing import make_options
from tests import zoo


def measured(model, seq_len, **options):
    """(batched, sequential) profiles of the same seeds, and whether the batched pass was the one that ran."""
    ran = []

    def spy(*args):
        ran.append(real(*args))
        return ran[-1]

    real = seeds.batched
    with mock.patch.object(seeds, "batched", spy):
        together = probe(model, seq_len, **options)
    with mock.patch.object(seeds, "batchable", lambda *args: False):
        apart = probe(model, seq_len, **options)
    return together, apart, bool(ran) and ran[0] is not None


def assert_same_draws(together, apart, rtol):
    assert together.batch_size == apart.batch_size and together.seeds == apart.seeds
    for a, b in zip(together.seed_profiles, apart.seed_profiles, strict=True):
        assert (a.seed, a.batch_size, a.model, a.name, a.measure, a.inputs) == (
            b.seed,
            b.batch_size,
            b.model,
            b.name,
            b.measure,
            b.inputs,
        )
        assert (a.input_size, a.hidden_size, a.layer, a.warmup, a.zeros) == (
            b.input_size,
            b.hidden_size,
            b.layer,
            b.warmup,
            b.zeros,
        )
        np.testing.assert_allclose(a.sample_norms, b.sample_norms, rtol=rtol, atol=0)
        np.testing.assert_allclose(a.norms, b.norms, rtol=rtol, atol=0)
        np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_allclose(together.norms, apart.norms, rtol=rtol, atol=0)
    for name in ("ratio", "rate", "lyapunov"):
        assert getattr(together, name) == pytest.approx(getattr(apart, name), rel=rtol * 100, abs=rtol)


def f64(model):
    return model.to(torch.float64)


@pytest.mark.parametrize(
    ("build", "seq_len", "options"),
    [
        (lambda: f64(reference.lstm(4, 6)), 12, {}),
        (lambda: f64(reference.gru(3, 5)), 10, {"measure": "hidden", "warmup": 4}),
        (lambda: f64(reference.lstm(3, 5)), 10, {"measure": "cell", "checkpoints": 4}),
        (lambda: f64(reference.rnn(3, 5)), 9, {"batch_size": 3}),
        (lambda: f64(zoo.seeded(nn.LSTM, 3, 4)), 8, {}),  # time-major
        (lambda: f64(zoo.seeded(zoo.RNNModel)), 8, {}),  # tokens, init_hidden, logits flattened to (seq*batch, vocab)
        (lambda: f64(reference.lstm(3, 4)), 8, {"input_fn": lambda b, t, g: torch.rand(b, t, 3, generator=g)}),
    ],
)
def test_batched_seeds_equal_the_one_seed_passes_in_float64(build, seq_len, options, state_guard):
    model = state_guard(build())
    together, apart, batched = measured(model, seq_len, seeds=3, seed=2, **options)
    assert batched
    assert_same_draws(together, apart, rtol=1e-12)


def test_batched_seeds_equal_the_one_seed_passes_in_float32_to_rounding(state_guard):
    model = state_guard(reference.lstm(8, 16))
    together, apart, batched = measured(model, 30, seeds=4)
    assert batched
    assert_same_draws(together, apart, rtol=1e-5)


def test_an_input_fn_reading_the_global_rng_sees_it_seeded_as_one_seed_passes_do_and_leaves_it_alone(state_guard):
    model = state_guard(reference.rnn(3, 4).to(torch.float64))
    together, apart, batched = measured(model, 6, seeds=2, input_fn=lambda b, t, g: torch.randn(b, t, 3))
    assert batched
    assert_same_draws(together, apart, rtol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "train"},  # batch statistics and dropout draws depend on the batch
        {"lengths": [6, 3], "batch_size": 2},
        {"loss_fn": lambda out: out[0][:, -1].sum()},
        {"forward": lambda model, x: model(x)},
        {"inputs": torch.randn(2, 6, 3)},
        {"contributions": True, "measure": "hidden"},
    ],
)
def test_what_the_rows_of_a_batch_could_mix_in_runs_one_seed_after_another(options):
    model = nn.LSTM(3, 4, batch_first=True)
    assert not seeds.batchable(model, make_options(model, 6, {"seeds": 2, **options}))
    assert not seeds.batchable(lambda: nn.LSTM(3, 4), make_options(model, 6, {"seeds": 2}))


def test_a_batched_pass_that_leaves_the_dtype_range_gives_way_to_one_seed_passes():
    model = reference.rnn(4, 16)  # float32: decays past the normal range within 200 steps, renormalised
    together, apart, batched = measured(model, 200, seeds=2)
    assert not batched
    assert_same_draws(together, apart, rtol=0)
    assert together.log10_sample_norms is not None


def test_a_model_whose_output_rows_are_not_the_batch_gives_way_to_one_seed_passes():
    class Pooled(nn.Module):  # its output mixes the batch: one row for the whole batch
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0].mean(dim=0, keepdim=True)

    with pytest.raises(Exception, match="rows at its last step but the batch has"):
        measured(Pooled(), 6, seeds=2)


def test_a_seed_with_nan_gradients_makes_the_pooled_profile_non_finite():
    def inputs(batch, steps, generator):  # seed 1's draw is NaN: its gradient is NaN at every step
        x = torch.randn(batch, steps, 3, generator=generator)
        return x * math.nan if generator.initial_seed() == 1 else x

    pooled = probe(reference.rnn(3, 4), 6, seeds=3, input_fn=inputs)
    assert [p.finite for p in pooled.seed_profiles] == [True, False, True]
    assert not pooled.finite and np.isnan(pooled.norms).all()


class AlwaysOnDropout(nn.Module):
    """Dropout kept on in eval mode (MC dropout): rows never mix, but each draws from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)

    def forward(self, x):
        return nn.functional.dropout(self.rnn(x)[0], 0.5, training=True)


class NoisyInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 8, batch_first=True)

    def forward(self, x):
        return self.rnn(x + 0.5 * torch.randn_like(x))[0]


@pytest.mark.parametrize("build", [AlwaysOnDropout, NoisyInput])
def test_a_forward_drawing_from_the_global_generator_runs_each_seed_under_its_own(build, state_guard):
    """The batched pass would seed the global generator once for every seed's rows: each seed's pass seeds it
    with its own, so a model that draws from it is measured seed by seed, as the one-seed probes are."""
    torch.manual_seed(0)
    model = state_guard(build().double())
    returned = []
    batched = seeds.batched
    with mock.patch.object(seeds, "batched", lambda *args: returned.append(batched(*args)) or returned[-1]):
        together = probe(model, 12, seeds=3, seed=2)
    assert returned == [None]  # the batched pass ran, and gave way
    for profile, seed in zip(together.seed_profiles, (2, 3, 4), strict=True):
        np.testing.assert_array_equal(profile.sample_norms, probe(model, 12, seed=seed).sample_norms)
