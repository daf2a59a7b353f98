"""Log-domain profiles: where the plain backward pass leaves the dtype's range, the probe renormalises it between
chunks of the sequence, and `log10_norms` / `log10_ratio` stay exact however far the gradient falls."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from zoo import RNNCellLoop, seeded

from pytest_gradhealth import GradientProfile, ReportFormatError, probe, reference
from pytest_gradhealth.engine import probe as engine
from pytest_gradhealth.engine import renormalise
from pytest_gradhealth.engine.options import make_options
from pytest_gradhealth.engine.renormalise import Renormaliser
from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.metrics import METRICS, log10_number
from pytest_gradhealth.report.export import build_report, load_report
from pytest_gradhealth.report.gate import FailRule
from pytest_gradhealth.report.records import ProbeRecord
from pytest_gradhealth.report.text import render_table


def renormalised(model: nn.Module, seq_len: int, chunk: int, **given) -> GradientProfile:
    """The probe's pass with the backward renormalised every `chunk` steps, whether or not it needs it."""
    options = make_options(model, seq_len, given)
    facts = engine.model_facts(model, options)
    renormaliser = Renormaliser(chunk, options)
    return engine._pass(model, options, facts, renormaliser)[0]


class Stacked(nn.Module):
    """Two recurrent modules one after the other, batch-first, behind a token embedding: every boundary is crossed
    by both modules' states, which must share its factor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True, proj_size=6)
        self.gru = nn.GRU(6, 10, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(self.embed(tokens))[0])[0])


@pytest.mark.parametrize(
    ("build", "options"),
    [
        (lambda: nn.RNN(6, 16), {}),
        (lambda: nn.LSTM(6, 16, num_layers=2), {}),
        (lambda: nn.GRU(6, 16, batch_first=True), {}),
        (lambda: nn.RNN(6, 16, nonlinearity="relu"), {"warmup": 7}),
        (Stacked, {}),
        (lambda: nn.LSTM(6, 16), {"checkpoints": 9}),
        (lambda: nn.LSTM(6, 16, num_layers=2), {"measure": "cell", "layer": 0}),
        (lambda: nn.LSTM(6, 16, num_layers=2, proj_size=5), {"measure": "hidden"}),
        (lambda: nn.GRU(6, 16, batch_first=True), {"measure": "hidden", "warmup": 5}),
        (Stacked, {"measure": "cell", "module": "lstm"}),
        (Stacked, {"measure": "hidden", "module": "gru", "checkpoints": 7}),
    ],
    ids=[
        "rnn",
        "lstm-2-layers",
        "gru-batch-first",
        "relu-warmup",
        "stacked-tokens",
        "checkpoints",
        "lstm-cell-layer-0",
        "lstm-proj-hidden",
        "gru-hidden-warmup",
        "stacked-lstm-cell",
        "stacked-gru-hidden",
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_a_renormalised_pass_equals_the_plain_one_in_float64(build, options, chunk, monkeypatch):
    """Powers of two are exact: in float64, where nothing underflows, both passes agree to rounding (here every
    boundary rescales, however large the gradient crossing it)."""
    monkeypatch.setattr(renormalise, "LAZY", 0)
    torch.manual_seed(0)
    model = build().double()
    plain = probe(model, 60, **options)
    assert plain.log10_sample_norms is None  # in range: the probe did not renormalise
    scaled = renormalised(model, 60, chunk, **options)
    assert scaled.log10_sample_norms is not None
    np.testing.assert_allclose(scaled.log10_norms, plain.log10_norms, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scaled.log10_sample_norms, np.log10(plain.sample_norms), rtol=0, atol=1e-12)
    assert scaled.rate == pytest.approx(plain.rate, rel=1e-12)
    assert scaled.log10_ratio == pytest.approx(math.log10(plain.ratio), abs=1e-12)


def test_a_long_probe_in_range_is_run_in_chunks_that_rescale_nothing():
    """From 4 * first_chunk steps on, the first pass runs in chunks; a gradient that stays within 2**+-LAZY crosses
    every boundary untouched, so the profile is the plain pass's (to the rounding of chunked kernel calls)."""
    model = reference.lstm(32, 64, forget_bias=3.0)
    options = make_options(model, 300, {})
    facts = engine.model_facts(model, options)
    assert options.run_len >= 4 * renormalise.first_chunk(torch.float32)
    chunked = probe(model, 300)
    plain = engine._pass(model, options, facts, None)[0]
    assert chunked.log10_sample_norms is None and plain.log10_norms.min() > -6
    np.testing.assert_allclose(chunked.log10_norms, plain.log10_norms, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "passes"),
    [
        (lambda: nn.RNN(32, 64, batch_first=True), [True]),  # two chunks: in chunks from the start, one pass
        (lambda: nn.LSTM(32, 64, batch_first=True), [False]),  # in range: one plain pass
        (lambda: nn.GRU(32, 64, batch_first=True), [False]),
    ],
)
def test_a_vanilla_rnn_runs_in_chunks_from_two_chunks_on_and_other_models_from_four(build, passes, monkeypatch):
    """A default tanh RNN leaves float32's range within two chunks (126 steps): its probe is one renormalised pass,
    not a plain one and then a renormalised one. An LSTM or GRU there stays in range: one plain pass."""
    seen = []
    original = engine._pass

    def counted(model, options, facts, renormaliser):
        seen.append(renormaliser is not None)
        return original(model, options, facts, renormaliser)

    monkeypatch.setattr(engine, "_pass", counted)
    torch.manual_seed(0)
    model = build()
    assert 2 * renormalise.first_chunk(torch.float32) <= 130 < 4 * renormalise.first_chunk(torch.float32)
    profile = probe(model, 130)
    assert seen == passes
    if passes[0]:
        assert profile.log10_ratio < math.log10(torch.finfo(torch.float32).tiny)  # beyond float32, measured
        assert profile.zeros is None and profile.subnormal_steps is not None and profile.subnormal_steps.size == 0


@pytest.mark.parametrize("measure", ["hidden", "cell"])
def test_a_short_state_probe_that_goes_subnormal_is_rerun_renormalised(measure):
    """Below four chunks an LSTM's state probe runs plain first; at 200 steps its float32 gradient reaches subnormal
    numbers (about 1e-44 of the last step's) without underflowing to zero. Those have lost their precision: the probe
    reads them as out of range and measures again, renormalised (a plain float32 pass misread step 0 by 0.47
    decades)."""
    model = reference.lstm(32, 64)
    profile = probe(model, 200, measure=measure)
    exact = probe(model, 200, measure=measure, dtype=torch.float64)
    assert profile.log10_sample_norms is not None and profile.log10_norms.min() < -38
    np.testing.assert_allclose(profile.log10_norms, exact.log10_norms, rtol=0, atol=1e-5)


@pytest.mark.parametrize("measure", ["input", "hidden"])
def test_a_float16_probe_is_rescaled_before_its_gradient_turns_subnormal(measure):
    """float16's normal numbers span 2**-14 .. 2**16: a boundary rescales outside [2**-3, 2**3) (`lazy`), not
    2**+-20, so a chunk's gradient never reaches the subnormal range, where it lost 0.03-0.04 decades here."""
    assert renormalise.lazy(torch.float16) == 3 and renormalise.lazy(torch.bfloat16) == renormalise.LAZY
    model = reference.lstm(8, 16)
    profile = probe(model, 64, dtype=torch.float16, measure=measure)
    exact = probe(model, 64, dtype=torch.float64, measure=measure)
    assert exact.log10_ratio < -12  # far below float16's smallest subnormal number, 6e-8
    np.testing.assert_allclose(profile.log10_norms, exact.log10_norms, rtol=0, atol=0.01)


def test_a_bfloat16_probe_that_underflows_is_renormalised_within_bfloat16s_rounding():
    """bfloat16 has float32's range and 8 bits of precision: its renormalised pass differs from the plain one by its
    rounding (0.004 decades here), which the check against the plain pass must allow (it returned the plain
    profile, -inf at the earliest 23 steps)."""
    model = reference.lstm(8, 16)
    profile = probe(model, 200, dtype=torch.bfloat16)
    exact = probe(model, 200, dtype=torch.float64)
    assert profile.log10_sample_norms is not None and exact.log10_ratio < -38
    np.testing.assert_allclose(profile.log10_norms, exact.log10_norms, rtol=0, atol=0.1)


@pytest.mark.parametrize(
    ("largest", "exponent"),
    [
        (2.0**-20, 0),  # the edges of [2**-LAZY, 2**LAZY): in range, untouched
        (2.0**20 * (1 - 2**-52), 0),
        (2.0**-20 * (1 - 2**-52), 20),  # just outside: brought to [0.5, 1)
        (2.0**20, -20 - 1),
        (3e-300, 994),
        (0.0, 0),  # nothing to scale, or nothing that scaling could make finite
        (math.inf, 0),
        (math.nan, 0),
    ],
)
def test_a_boundary_rescales_only_a_gradient_outside_the_lazy_range(largest, exponent):
    assert renormalise.LAZY == renormalise.lazy(torch.float32) == renormalise.lazy(torch.float64) == 20
    assert renormalise._lazy_exponent(largest, renormalise.LAZY) == exponent
    if exponent:
        assert 0.5 <= largest * 2.0**exponent < 1.0


@pytest.mark.parametrize("per_sample", [True, False])
def test_one_boundary_scales_each_sample_or_the_batch_by_its_largest_entry(per_sample):
    """Eval mode: each sample by its own largest entry over every state (h and c); train mode: the batch by its
    largest. Exact powers of two, also where 2**exponent alone would leave float32's range."""
    renormaliser = Renormaliser(4, make_options(nn.LSTM(2, 3), 12, {"mode": "eval" if per_sample else "train"}))
    h = torch.tensor([[1e-30, -3e-31], [0.25, 2.0], [1e-44, 0.0]])  # the last: subnormal in float32
    c = torch.tensor([[0.0, 2e-30], [1e-3, 0.0], [0.0, 0.0]])
    exponent = renormaliser.exponent(0, (h, None, c))
    if not per_sample:
        assert exponent is None  # the batch's largest, 2.0, is in range
        return
    assert exponent.tolist() == [-math.frexp(2e-30)[1], 0, -math.frexp(1e-44)[1]]
    scaled = renormalise._times_power_of_two(h, exponent)
    expected = h.double() * torch.tensor(2.0).double() ** torch.tensor(exponent, dtype=torch.float64)[:, None]
    assert torch.equal(scaled.double(), expected)
    assert renormaliser.exponent(0, (h * 1e10, None, c)) is exponent  # the first crossing decides


def own_renormalised_log10_norms(rnn: nn.RNN, x: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    """log10 of the RMS over the batch of ||dL/dx_t|| for L = sum_b <v, h_T>, by a hand-written backward pass through
    the tanh RNN's recorded float32 states, in float64, renormalised at every step."""
    with torch.no_grad():
        h = rnn(x)[0].double()  # (seq, batch, hidden)
    w_ih, w_hh = rnn.weight_ih_l0.detach().double(), rnn.weight_hh_l0.detach().double()
    delta = v.double().expand(x.shape[1], -1).clone()  # dL/dh_T
    log_scale = torch.zeros(x.shape[1], dtype=torch.float64)
    logs = []
    for t in range(x.shape[0] - 1, -1, -1):
        pre = delta * (1 - h[t] ** 2)
        logs.append(torch.log10(torch.linalg.vector_norm(pre @ w_ih, dim=1)) + log_scale)
        delta = pre @ w_hh
        size = torch.linalg.vector_norm(delta, dim=1)
        delta, log_scale = delta / size[:, None], log_scale + torch.log10(size)
    per_sample = torch.stack(logs[::-1], 1).numpy()  # (batch, seq)
    top = per_sample.max(0)
    return top + 0.5 * np.log10(np.mean(10 ** (2 * (per_sample - top)), axis=0))


def test_a_float32_tanh_rnn_at_1000_steps_matches_an_own_renormalised_backward_pass():
    """Held-out check of the issue: within 1e-3 decades at every step, 300+ decades below float32's range."""
    torch.manual_seed(0)
    rnn = nn.RNN(32, 64)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 8, 32, generator=generator)
    v = torch.randn(64, generator=generator)
    profile = probe(rnn, 1000, inputs=x, loss_fn=lambda out: (out[0][-1] * v).sum())
    truth = own_renormalised_log10_norms(rnn, x, v)
    assert profile.log10_sample_norms is not None and np.isfinite(profile.log10_norms).all()
    assert profile.log10_norms[0] < -300  # far below float32's 1e-45 and float64's subnormals
    np.testing.assert_allclose(profile.log10_norms, truth, rtol=0, atol=1e-3)
    assert profile.zeros is None and profile.subnormal_steps.size == 0


def test_float32_and_float64_probes_of_one_model_agree_in_log10():
    """The float32 probe renormalises; a float64 probe of the same weights does not need to: both measure one decay."""
    model = reference.rnn(4, 64)
    low = probe(model, 200)
    high = probe(model, 200, dtype=torch.float64)
    assert low.log10_sample_norms is not None and high.log10_sample_norms is None
    assert low.log10_norms[0] < -40  # below float32's smallest subnormal
    np.testing.assert_allclose(low.log10_norms, high.log10_norms, rtol=0, atol=1e-3)


@pytest.mark.parametrize("measure", ["hidden", "cell"])
def test_a_float32_lstms_state_profile_past_float32s_range_matches_a_float64_probe(measure):
    torch.manual_seed(0)
    model = nn.LSTM(8, 16)
    low = probe(model, 300, measure=measure, batch_size=4)
    high = probe(model, 300, measure=measure, batch_size=4, dtype=torch.float64)
    assert low.log10_sample_norms is not None and high.log10_sample_norms is None
    assert low.log10_norms[0] < -45  # past float32's range
    np.testing.assert_allclose(low.log10_norms, high.log10_norms, rtol=0, atol=1e-3)


def test_weight_contributions_are_not_renormalised():
    """They sum over the steps, whose gradients a renormalised pass scales by different factors."""
    torch.manual_seed(0)
    profile = probe(nn.RNN(4, 64), 300, measure="hidden", contributions=True)
    assert profile.log10_sample_norms is None and profile.zeros == "underflow"


def test_a_decay_beyond_float64_is_a_number_in_the_metrics_table_gate_and_json():
    model = reference.rnn(32, 64).double()
    profile = probe(model, 1800)
    assert profile.norms[0] == 0.0 and np.isfinite(profile.log10_norms).all()
    assert -700 < profile.log10_ratio < -450
    # rate from the log-domain slope: the per-step factor, as over a range float64 can hold
    assert profile.rate == pytest.approx(probe(model, 300).rate, rel=0.02)
    assert profile.ratio == 0.0
    shown = METRICS["ratio"].show(profile)
    assert shown == log10_number(profile.log10_ratio) and f"e{math.floor(profile.log10_ratio)}" in shown
    assert profile.horizon() == probe(model, 300).horizon()
    restored = GradientProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    np.testing.assert_array_equal(restored.log10_norms, profile.log10_norms)
    assert restored.log10_ratio == profile.log10_ratio
    # the gate compares log10: 3 decades less is a regression past ratio:10x, beyond float64's range too
    worse = replace(profile, log10_sample_norms=profile.log10_sample_norms - 3 * (profile.lags > 0))
    assert worse.log10_ratio == pytest.approx(profile.log10_ratio - 3)
    assert FailRule("ratio", 10.0, "x").broken_by(profile, worse)
    assert not FailRule("ratio", 10.0, "x").broken_by(worse, profile)


def test_log10_number_writes_figures_outside_float64():
    assert log10_number(-5000.0) == "1e-5000"
    assert log10_number(math.log10(3.2) - 5000) == "3.2e-5000"
    assert log10_number(math.log10(0.0123)) == "0.0123"
    assert log10_number(-math.inf) == "0" and log10_number(math.nan) == "nan"


def test_models_whose_steps_meet_elsewhere_keep_their_plain_flagged_profile():
    """A cell loop and a bidirectional layer are not renormalised: their underflow stays flagged, never guessed."""
    loop = probe(seeded(RNNCellLoop, 4, 64), 200)
    assert loop.log10_sample_norms is None and loop.zeros == "underflow"
    states = probe(seeded(RNNCellLoop, 4, 64), 200, measure="hidden", cell="cell")  # its states: subnormal flagged
    assert states.log10_sample_norms is None and states.subnormal_steps is not None and states.subnormal_steps.size
    torch.manual_seed(0)
    both = probe(nn.RNN(4, 64, bidirectional=True), 300)
    assert both.log10_sample_norms is None and both.zeros == "underflow"


def test_renormalising_keeps_the_guarantees():
    model = reference.rnn(4, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forward = model.forward
    rng = torch.get_rng_state()
    first, second = probe(model, 300), probe(model, 300)
    assert first.log10_sample_norms is not None
    np.testing.assert_array_equal(first.log10_sample_norms, second.log10_sample_norms)  # same seed, same numbers
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert model.forward == forward and "forward" not in model.core.__dict__


def test_a_saved_report_keeps_the_log_domain_and_checks_its_shape(tmp_path):
    profile = probe(reference.rnn(32, 64).double(), 1500)
    records = [ProbeRecord("t.py::deep", "rnn", profile, "vanishing")]
    data = json.loads(json.dumps(build_report(records, [], {"min_ratio": 1e-3, "max_ratio": 1e3}, Path("."))))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    loaded = load_report(path).records[0].profile
    assert loaded.log10_ratio == profile.log10_ratio < -400
    table = "\n".join(render_table(load_report(path).records))
    assert METRICS["ratio"].show(profile) in table
    data["probes"][0]["profile"]["log10_sample_norms"] = data["probes"][0]["profile"]["log10_sample_norms"][1:]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportFormatError, match="log10_sample_norms"):
        load_report(path)


class Bypassing(nn.Module):
    """Runs its nn.RNN through the class's forward, never the instance's: no stand-in can see the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 64, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.RNN.forward(self.rnn, x)[0]


def test_a_model_whose_recurrence_bypasses_the_renormalised_pass_keeps_its_flagged_profile():
    torch.manual_seed(0)
    profile = probe(Bypassing(), 300)
    assert profile.log10_sample_norms is None and profile.zeros == "underflow"


def test_a_gradient_that_explodes_past_float32s_largest_number_is_measured_not_nan():
    """h_t = relu(1.5 h_{t-1} + W x_t) with positive inputs: the gradient grows exactly 1.5x per step back, past
    float32's 3.4e38 (the plain pass reads Inf and NaN) to 1.5**299 = 4.5e52."""
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, nonlinearity="relu", bias=False)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1.5 * torch.eye(16))
        rnn.weight_ih_l0.abs_()
    x = torch.rand(300, 8, 4, generator=torch.Generator().manual_seed(0))
    profile = probe(rnn, 300, inputs=x)
    assert profile.finite and profile.log10_sample_norms is not None
    assert profile.log10_ratio == pytest.approx(299 * math.log10(1.5), abs=1e-4)
    assert profile.rate == pytest.approx(1.5, rel=1e-6)


def test_a_long_renormalised_probe_holds_one_chunks_graph_at_a_time_with_the_same_numbers(monkeypatch):
    """From `segments.SEGMENT_FROM_STEPS` on, the renormalised pass's chunks are rebuilt in backward one at a time
    (bounded memory): the profile is the one the chunks give with their graphs kept, to float32 rounding (a segment's
    forward runs without a graph, where the CPU kernel may round differently)."""
    from pytest_gradhealth.engine.taps import segments

    torch.manual_seed(0)
    model = nn.LSTM(4, 16, num_layers=2)
    kept = probe(model, 400)
    calls = []
    original = segments.Segment.apply
    monkeypatch.setattr(segments, "SEGMENT_FROM_STEPS", 64)
    monkeypatch.setattr(segments.Segment, "apply", lambda *a: calls.append(1) or original(*a))
    rebuilt = probe(model, 400)
    assert kept.log10_sample_norms is not None and calls
    np.testing.assert_allclose(rebuilt.log10_sample_norms, kept.log10_sample_norms, rtol=0, atol=1e-5)


class Seq2Seq(nn.Module):
    """An encoder hands its final state to a decoder that runs over as many (zero) steps: the gradient reaches the
    encoder only through the decoder's first step, a jump across the chunks' order in time."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.RNN(4, 32, batch_first=True)
        self.decoder = nn.RNN(4, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(x)
        return self.decoder(torch.zeros_like(x), state)[0]


class Projected(nn.Module):
    """A projection before the LSTM: the LSTM does not read the probe's input tensor itself."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(4, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.project(x))[0]


def counted_passes(monkeypatch) -> list:
    calls = []
    original = engine._pass
    monkeypatch.setattr(engine, "_pass", lambda *a: calls.append(a[3] is not None) or original(*a))
    return calls


def test_an_initial_state_computed_from_other_steps_is_never_renormalised(monkeypatch):
    torch.manual_seed(0)
    model = Seq2Seq()
    with torch.no_grad():  # orthogonal recurrences: the gradient falls to ~1e-23, below 2**-20, within float32
        for rnn in (model.encoder, model.decoder):
            nn.init.orthogonal_(rnn.weight_hh_l0)
            rnn.weight_ih_l0.mul_(0.1)
    calls = counted_passes(monkeypatch)
    profile = probe(model, 300)
    assert calls == [True, False]  # the chunked pass was refused, the plain one kept
    assert profile.log10_sample_norms is None and profile.log10_norms.min() < -20


def test_a_chunked_first_pass_is_checked_against_a_plain_one_unless_the_module_reads_the_probes_input(monkeypatch):
    torch.manual_seed(0)
    calls = counted_passes(monkeypatch)
    direct = probe(nn.LSTM(4, 16, batch_first=True), 300)
    assert direct.log10_sample_norms is not None and calls == [True]  # one pass: the LSTM reads the probe's input
    calls.clear()
    torch.manual_seed(0)
    projected = probe(Projected(), 300)
    assert projected.log10_sample_norms is not None and calls == [True, False]  # checked against a plain pass


def test_a_gradient_that_underflows_at_every_step_is_not_called_disconnected():
    """An encoder-decoder at default initialisation: 300 decoder steps take the whole float32 gradient below its range
    (and the decoder's state is computed, so no renormalised pass). The error says so and names dtype=."""
    torch.manual_seed(0)
    with pytest.raises(InvalidArgumentError, match=r"underflowed to exactly zero at every one .* dtype=torch.float64"):
        probe(Seq2Seq(), 300)
