"""`profile.transient`: a U-shaped profile from the start in a zero state is flagged, in messages and the report."""

from __future__ import annotations

import pytest
import torch

from pytest_gradhealth import probe, reference
from pytest_gradhealth.checks import NoVanishing
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.markdown import render_markdown
from pytest_gradhealth.report.records import ProbeRecord
from pytest_gradhealth.report.text import render_table


def shaped(norms: list[float], warmup: int = 0) -> GradientProfile:
    return GradientProfile(norms=norms, sample_norms=[norms], seq_len=len(norms), warmup=warmup, model="M")


def test_transient_is_step_0_at_least_twice_the_smallest_later_norm_without_warmup():
    assert shaped([2.0, 1.0, 3.0, 4.0]).transient  # exactly the factor
    assert not shaped([1.99, 1.0, 3.0, 4.0]).transient
    assert shaped([8.0, 4.0, 1.0, 4.0]).transient  # the minimum anywhere after step 0
    assert not shaped([0.1, 0.5, 1.0]).transient  # plain decay: step 0 is the minimum
    assert not shaped([2.0, 1.0, 3.0], warmup=5).transient  # past a warm-up the rise is the stationary dynamics'
    assert shaped([2.0, 0.0, 1.0, 3.0]).transient is True  # an exact zero is no minimum to rise from: 2 / 1
    assert not shaped([0.0, 0.0, 1.0]).transient


@pytest.mark.parametrize("cls", [torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU])
def test_default_recurrent_layers_are_not_flagged(cls):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(32, 64, batch_first=True)
    for seq_len in (20, 50, 100):
        assert not probe(model, seq_len).transient  # their earliest step is their smallest (rise 1.0)


def test_an_lstm_with_forget_bias_3_is_u_shaped_and_its_message_and_report_say_so():
    model = reference.lstm(32, 64, forget_bias=3)
    profile = probe(model, 100)
    logs = profile.log10_norms
    assert profile.transient and 2.0 <= 10 ** (logs[0] - logs[1:].min()) < 2.3  # measured 2.13, minimum at step 52
    assert not probe(model, 100, warmup=100).transient
    message = NoVanishing(min_ratio=0.9).record(profile, lambda verdict: [])["message"]
    assert "transient: the profile is U-shaped, step 0's gradient is 2.13x the smallest (step 52)" in message
    assert "probe with warmup= (e.g. warmup=100)" in message
    records = [ProbeRecord("t::u", "lstm", profile, "ok"), ProbeRecord("t::d", "rnn", shaped([0.1, 1.0]), "ok")]
    note = render_table(records, width=200)[-1]
    assert note.startswith("transient: 1 probe(s) U-shaped by the start from a zero state (step 0 >= 2x")
    assert note.endswith("t::u [lstm]; probe with warmup= to measure past it")
    assert render_markdown(records)[-1].startswith("*transient: 1 probe(s) U-shaped")
    assert not any("transient" in line for line in render_table(records[1:], width=200))
