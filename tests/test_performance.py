"""The probe's fast paths (issue 15) give the answers of the plain computations they replace; long probes that would
not fit in memory are refused before they run."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import re
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import probe, reference
from pytest_gradhealth.engine import forward, guard, memory
from pytest_gradhealth.engine.options import make_options
from pytest_gradhealth.engine.probe import model_facts
from pytest_gradhealth.engine.sequences import batch_rms
from pytest_gradhealth.engine.taps import lstm, scans, segments
from pytest_gradhealth.engine.taps.base import per_step, sample_norms, subnormal_steps
from pytest_gradhealth.errors import GradHealthError, InvalidArgumentError


def exact_subnormal(g: torch.Tensor) -> list[bool]:
    """Per step (axis 1), whether some sample's entries of a (batch, seq, features) tensor hold one that is nonzero
    and below the smallest normal number, in a vector whose norm is below tiny / eps (where such an entry is above
    the norm's rounding), one entry at a time in Python."""
    info = torch.finfo(g.dtype)
    found = []
    for t in range(g.shape[1]):
        found.append(
            any(
                any(0 < abs(float(v)) < info.tiny for v in g[b, t])
                and math.sqrt(sum(float(v) ** 2 for v in g[b, t])) < info.tiny / info.eps
                for b in range(g.shape[0])
            )
        )
    return found


def subnormal(g: torch.Tensor) -> list[bool]:
    return subnormal_steps(g, sample_norms(g))[0].tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_subnormal_steps_are_the_entries_between_zero_and_the_smallest_normal_number(dtype):
    info = torch.finfo(dtype)
    g = torch.full((2, 7, 3), 4 * info.tiny, dtype=dtype)  # norms far below tiny / eps: subnormal entries count
    g[0, 0, 0] = 0.0  # zero: not subnormal
    g[1, 1, 2] = info.tiny  # the smallest normal number: not subnormal
    g[0, 2, 1] = -info.tiny * info.eps  # the smallest subnormal number, negative
    g[1, 3, 0] = info.tiny - info.tiny * info.eps  # the largest subnormal number
    g[0, 4, 2] = float("nan")  # NaN and inf are not subnormal
    g[1, 5, 1] = float("inf")
    g[0, 6] = torch.tensor([1.0, 1.0, info.tiny * info.eps], dtype=dtype)  # below this norm's rounding: not counted
    expected = [False, False, True, True, False, False, False]
    assert exact_subnormal(g) == expected
    assert subnormal(per_step([g], "batch-time-feature")) == expected
    g[1, 6] = info.tiny * info.eps  # a sample whose norm is subnormal itself
    assert subnormal(g)[6] and exact_subnormal(g)[6]
    assert not any(subnormal(torch.ones(2, 6, 3, dtype=dtype)))  # no op on the gradient
    beside_nan = torch.ones(2, 3, 3, dtype=dtype)
    beside_nan[0, 0, 0], beside_nan[1, 2] = float("nan"), info.tiny * info.eps
    assert subnormal(beside_nan) == [False, False, True]
    assert not any(subnormal(torch.full((2, 6, 3), 4 * info.tiny, dtype=dtype)))  # the first test alone
    assert not any(subnormal(torch.zeros(2, 6, 3, dtype=dtype)))  # zeros take the second


def test_subnormal_steps_of_one_gradient_per_step_and_of_a_time_major_one():
    g = torch.full((2, 4, 3), 1e-35)
    g[1, 2, 0] = 1e-40
    per_steps = per_step([g[:, t] for t in range(4)], "batch-time-feature")
    assert subnormal(per_steps) == [False, False, True, False]
    assert subnormal(per_step([g.transpose(0, 1)], "time-batch-feature")) == [False, False, True, False]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [3, 32, 127, 128, 1000])
def test_the_blocked_scan_is_the_sequential_recurrence_at_long_lengths(length, reverse):
    gen = torch.Generator().manual_seed(length)
    a = torch.rand(length, 3, generator=gen, dtype=torch.float64) * 1.9 - 0.95
    b = torch.randn(length, 3, generator=gen, dtype=torch.float64)
    y, expected = torch.zeros(3, dtype=torch.float64), torch.empty_like(b)
    for t in range(length - 1, -1, -1) if reverse else range(length):
        y = expected[t] = a[t] * y + b[t]
    torch.testing.assert_close(scans.linear_scan(a, b, reverse=reverse), expected, rtol=1e-12, atol=1e-12)


def test_tanh_by_the_sigmoid_is_tanh():
    x = torch.linspace(-30, 30, 10001, dtype=torch.float64)
    torch.testing.assert_close(lstm.tanh(x), torch.tanh(x), rtol=0, atol=4e-16)


def test_the_pre_activations_are_the_gate_products():
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(3, 4).double()
    x, h = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    expected = x @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh
    rows = slice(4, 12)
    torch.testing.assert_close(lstm.pre_activations(x, h, cell, "", rows), expected[..., rows], rtol=1e-13, atol=1e-15)


class TwoStates(torch.nn.Module):
    def forward(self, x, h, c, scale=1.0):
        return x


def test_the_required_arguments_of_a_forward_are_read_once_per_function(monkeypatch):
    calls = []
    signature = forward.inspect.signature
    monkeypatch.setattr(forward.inspect, "signature", lambda f: calls.append(f) or signature(f))
    first, second = TwoStates(), TwoStates()
    assert forward._state_arguments(first, 3) == [None, None]
    assert forward._state_arguments(second, 3) == [None, None]  # another instance of the class: same function
    assert len(calls) == 1

    def plain(x, h):  # the same reading for a plain callable, whose signature has no self
        return x

    assert forward._state_arguments(plain, 3) == [None]
    assert forward._state_arguments(functools.partial(plain, h=None), 3) == []
    assert forward._state_arguments(len, 3) == []  # a builtin: no signature, nothing passed


def short_check(monkeypatch, available: int) -> list[int]:
    """Estimate from 600 steps on (instead of 2**14), with `available` bytes; the pilots' lengths are recorded."""
    monkeypatch.setattr(memory, "CHECK_FROM_STEPS", 600)
    monkeypatch.setattr(memory, "available_bytes", lambda device: available)
    lengths: list[int] = []
    growth = memory._growth
    monkeypatch.setattr(memory, "_growth", lambda *a: lengths.append(a[1].run_len) or growth(*a))
    return lengths


def test_a_probe_that_would_not_fit_is_refused_with_the_estimate_and_what_to_pass(monkeypatch):
    short_check(monkeypatch, available=1024)  # 1000 steps of an nn.RNN at batch 8 take more than 1 KiB
    rnn = torch.nn.RNN(2, 2, batch_first=True)
    state = torch.get_rng_state()
    with pytest.raises(InvalidArgumentError) as caught:
        probe(rnn, 1000)
    message = str(caught.value)
    assert "over 1000 steps" in message and "0.00 GiB is available" in message
    assert "KiB per step" in message and "shorter seq_len" in message and "batch_size=" in message
    fits = int(re.search(r"about (\d+) steps fit", message).group(1))
    assert 0 <= fits < 1000
    assert torch.equal(torch.get_rng_state(), state)  # the pilot runs under the probe's guard


def test_a_probe_that_fits_runs_as_without_the_check(monkeypatch):
    rnn = torch.nn.RNN(2, 2, batch_first=True)
    unchecked = probe(rnn, 700)
    lengths = short_check(monkeypatch, available=2**40)
    before = [p.detach().clone() for p in rnn.parameters()]
    checked = probe(rnn, 700)
    assert lengths == [700]
    np.testing.assert_array_equal(checked.norms, unchecked.norms)
    assert all(torch.equal(a, b) for a, b in zip(before, rnn.parameters(), strict=True))
    assert all(p.grad is None for p in rnn.parameters())


def test_short_probes_are_not_estimated(monkeypatch):
    lengths = short_check(monkeypatch, available=0)
    probe(torch.nn.RNN(2, 2, batch_first=True), 599)
    assert lengths == []


def test_the_pilot_reads_the_growth_of_the_graph_per_step():
    rnn = torch.nn.RNN(2, 2, batch_first=True)
    options = make_options(rnn, 10**6, {})
    if memory.in_use_bytes(torch.device("cpu")) is None:
        pytest.skip("no glibc mallinfo2 here: the CPU estimate is not made")
    per_step, _ = memory._growth(rnn, options, model_facts(rnn, options))
    # An nn.RNN step at batch 8 keeps three small tensors (208 bytes of values) and their autograd nodes: kilobytes.
    assert 208 < per_step < 64 * 1024
    assert memory.available_bytes(torch.device("cpu")) > 0


def plain_and_segmented(module: torch.nn.RNNBase, x: torch.Tensor, hx, length: int):
    """The module's outputs and the gradients of a loss on them w.r.t. x (and hx), run plainly and in segments."""
    results = []
    for segmented in (False, True):
        states = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
        leaves = [t.detach().requires_grad_(True) for t in (x, *states)]
        state = None if hx is None else tuple(leaves[1:]) if isinstance(hx, tuple) else leaves[1]
        with contextlib.ExitStack() as stack:
            if segmented:
                segments.run_in_segments(module, x.shape[1], stack, segment=length)
            out, final = module(leaves[0], state)
        finals = final if isinstance(final, tuple) else (final,)
        loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum() + sum(f.sum() for f in finals)
        results.append([out, *finals, *torch.autograd.grad(loss, leaves)])
    return results


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.RNN(3, 4, num_layers=2, batch_first=True),
        lambda: torch.nn.RNN(3, 4, nonlinearity="relu", batch_first=True, bias=False),
        lambda: torch.nn.LSTM(3, 5, num_layers=2, proj_size=2, batch_first=True),
        lambda: torch.nn.GRU(3, 4, num_layers=2, batch_first=False),
    ],
)
@pytest.mark.parametrize("given_state", [False, True])
def test_a_module_run_in_segments_gives_its_own_outputs_and_gradients(make, given_state):
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(2, 10, 3, dtype=torch.float64)  # 10 steps in segments of 3: the last segment is shorter
    if not module.batch_first:
        x = x.transpose(0, 1).contiguous()
    hx = None
    if given_state:
        h = torch.randn(module.num_layers, 2, module.proj_size or module.hidden_size, dtype=torch.float64)
        c = torch.randn(module.num_layers, 2, module.hidden_size, dtype=torch.float64)
        hx = (h, c) if module.mode == "LSTM" else h
    plain, segmented = plain_and_segmented(module, x, hx, 3)
    assert len(plain) == len(segmented)
    for a, b in zip(plain, segmented, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert "forward" not in vars(module)  # the stand-in is gone with the stack


def test_segments_leave_packed_inputs_and_dropout_between_layers_to_the_module():
    module = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    calls = []
    with contextlib.ExitStack() as stack:
        segments.run_in_segments(module, 10, stack, segment=3)
        original = segments.Segment.apply
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(
            segments.Segment, "apply", lambda *a: calls.append(1) or original(*a)
        )
        module(torch.randn(10, 2, 3))  # train mode with dropout: the module's own forward draws its masks
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(10, 2, 3), [10, 7])
        module(packed)
        assert calls == []
        module.eval()
        module(torch.randn(10, 2, 3))
        assert len(calls) == 4  # ceil(10 / 3) segments


def test_a_long_probe_runs_its_fused_module_in_segments_with_the_same_profile(monkeypatch):
    torch.manual_seed(0)
    lstm_model = torch.nn.LSTM(3, 4, batch_first=True).double()
    plain = probe(lstm_model, 64)
    calls = []
    original = segments.Segment.apply
    monkeypatch.setattr(segments.Segment, "apply", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(segments, "SEGMENT_FROM_STEPS", 64)
    monkeypatch.setattr(memory, "CHECK_FROM_STEPS", 10**9)
    segmented = probe(lstm_model, 64)
    assert len(calls) == 8  # sqrt(64) segments
    np.testing.assert_allclose(segmented.norms, plain.norms, rtol=1e-12, atol=0)
    assert all(p.grad is None for p in lstm_model.parameters())


def test_segments_keep_a_fraction_of_the_memory_per_step():
    rnn = torch.nn.RNN(2, 2, batch_first=True)
    if memory.in_use_bytes(torch.device("cpu")) is None:
        pytest.skip("no glibc mallinfo2 here: memory in use cannot be read")
    per_step = {}
    for measure in ("input", "hidden"):  # input: in segments; hidden: the whole graph
        options = make_options(rnn, 10**6, {"measure": measure})
        per_step[measure] = memory._growth(rnn, options, model_facts(rnn, options))[0]
    # Measured: about 170 bytes against 4,200 per step at batch 8.
    assert per_step["input"] < per_step["hidden"] / 5


class WritesItsInput(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(3, 4, batch_first=True)

    def forward(self, x):
        x.mul_(2.0)
        return self.rnn(x)[0]


@pytest.mark.parametrize("measure", ["input", "hidden"])
def test_given_inputs_are_never_changed_by_a_model_that_writes_into_its_input(measure):
    inputs = torch.randn(2, 5, 3)
    before = inputs.clone()
    model = WritesItsInput()
    if measure == "input":  # not copied: the write into a leaf that requires grad fails
        with pytest.raises(GradHealthError, match="in-place"):
            probe(model, 5, inputs=inputs)
    else:  # copied: the model writes into the probe's copy
        probe(model, 5, inputs=inputs, measure=measure)
    assert torch.equal(inputs, before) and not inputs.requires_grad


class ScaledLSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        output, state = super().forward(input, hx)
        return 2 * output, state


def test_only_stock_forward_in_time_modules_are_segmented():
    assert segments.segmentable(torch.nn.GRU(2, 3)) and segments.segmentable(torch.nn.RNN(2, 3, nonlinearity="relu"))
    assert not segments.segmentable(torch.nn.LSTM(2, 3, bidirectional=True))  # its backward direction needs the end
    assert not segments.segmentable(ScaledLSTM(2, 3))  # a forward of its own: left as it is
    assert not segments.segmentable(torch.nn.LSTMCell(2, 3))


class FixedLength(torch.nn.Module):
    """Reads its whole sequence as one vector: it runs at one length only."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(steps * 2, 3)

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1))


def test_a_model_that_runs_at_one_length_only_is_probed_without_the_estimate(monkeypatch):
    short_check(monkeypatch, available=1024)  # the pilot fails at 256 steps: no refusal from it
    profile = probe(FixedLength(700), 700, input_size=2)
    assert profile.seq_len == 700


def careful_rms(norms: np.ndarray) -> np.ndarray:
    """The RMS over the batch in float64 by Python's own arithmetic on each column scaled by its largest."""
    out = []
    for column in norms.T:
        top = max(column)
        out.append(top * (sum((n / top) ** 2 for n in column) / len(column)) ** 0.5 if top > 0 else top)
    return np.array(out)


# 1.0: the few-op path; the others: where squares would leave float64's range
@pytest.mark.parametrize("scale", [1.0, 1e-150, 1e-200, 1e150, 1e200])
def test_the_batch_rms_is_exact_where_squares_would_leave_float64(scale):
    rng = np.random.default_rng(0)
    norms = rng.uniform(0.1, 3.0, size=(5, 7)) * scale
    norms[1, 2] *= 1e-30  # one sample far below the others at one step
    for valid in (np.ones(norms.shape, dtype=bool), None):  # None: every sample reaches every step
        rms, samples = batch_rms(norms, valid)
        np.testing.assert_allclose(rms, careful_rms(norms), rtol=1e-14, atol=0)
        assert np.array_equal(samples, norms)


def test_the_batch_rms_keeps_nan_zero_and_inf_and_skips_samples_that_do_not_reach_a_step():
    norms = np.array([[1.0, 0.0, np.nan, np.inf, 4.0], [3.0, 0.0, 1.0, 1.0, 100.0]])
    valid = np.ones(norms.shape, dtype=bool)
    for reached in (valid, None):
        rms, _ = batch_rms(norms, reached)
        assert rms[0] == pytest.approx(np.sqrt(5.0)) and rms[1] == 0.0 and np.isnan(rms[2]) and rms[3] == np.inf
    valid[1, 4] = False  # sample 1 does not reach step 4: only sample 0 counts there
    rms, samples = batch_rms(norms, valid)
    assert rms[4] == 4.0 and np.isnan(samples[1, 4])


def test_a_probe_walks_the_model_once_and_the_next_probe_walks_it_afresh(monkeypatch):
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 5, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    model = Model()
    walks = []
    named_modules = model.named_modules
    monkeypatch.setattr(model, "named_modules", lambda *a, **k: walks.append(1) or named_modules(*a, **k))
    first = probe(model, 6)
    assert len(walks) == 2  # layout, input size, hidden size, renormalisable, advice: one walk; the guard's own
    assert "vanilla RNN" in first.advice
    model.rnn = nn.LSTM(3, 5, batch_first=True)  # changed between probes: the next one sees it
    second = probe(model, 6)
    assert len(walks) == 4 and "forget-gate" in second.advice


def test_the_cell_gradient_read_through_h_over_o_is_the_one_of_the_recomputed_cell_states(monkeypatch):
    # tanh(c_t) = h_t / o_t from the layer's output, or c_t recomputed by a forward scan over the gates: the same
    # dL/dc_t in float64; in float32, where saturated cells (tanh(c) near +-1) cost both about 1e-4, as close to
    # float64's.
    torch.manual_seed(0)
    model = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    with torch.no_grad():
        model.weight_hh_l1.mul_(4.0)
    exact = probe(model, 40, measure="cell", dtype=torch.float64).sample_norms
    quotient = [probe(model, 40, measure="cell", dtype=dtype).sample_norms for dtype in (torch.float64, torch.float32)]
    monkeypatch.setattr(scans, "cell_slope", lambda h, o, module: None)
    recomputed = [
        probe(model, 40, measure="cell", dtype=dtype).sample_norms for dtype in (torch.float64, torch.float32)
    ]
    assert not np.array_equal(quotient[0], recomputed[0])  # two computations, not one path taken twice
    np.testing.assert_allclose(quotient[0], recomputed[0], rtol=1e-12)
    np.testing.assert_allclose(recomputed[0], exact, rtol=1e-12)
    error, baseline = np.abs(quotient[1] / exact - 1).max(), np.abs(recomputed[1] / exact - 1).max()
    assert 1e-6 < baseline < 1e-3 and error < 1.2 * baseline


def test_the_cell_states_are_recomputed_where_the_quotient_would_lose_precision():
    lstm = nn.LSTM(2, 2)
    o = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    slope = scans.cell_slope(torch.tensor([[0.25, 0.2]], dtype=torch.float64), o, lstm)  # tanh(c) 0.5 and 0.8
    torch.testing.assert_close(slope, torch.tensor([[0.375, 0.09]], dtype=torch.float64), rtol=1e-15, atol=0)
    assert scans.cell_slope(torch.tensor([[0.25, 0.25]], dtype=torch.float64), o, lstm) is None  # tanh(c) = 1
    assert scans.cell_slope(torch.tensor([[0.25, -0.26]], dtype=torch.float64), o, lstm) is None  # beyond 1
    assert scans.cell_slope(o, o, nn.LSTM(2, 3, proj_size=2)) is None
    assert scans.cell_slope(o, torch.tensor([[0.5, 1e-39]]), lstm) is None  # o not normal


def test_a_callable_objects_signature_is_read_once_per_class():
    class Step:
        def __call__(self, x, state, scale=1.0):
            return x

    first, second = Step(), Step()
    assert forward._required_after_input(first) == 1
    assert Step.__call__ in forward._REQUIRED[True]  # the class's __call__, shared by every instance
    assert forward._required_after_input(second) == 1
    assert forward._required_after_input(lambda x, h, c: x) == 2


def test_a_probe_remembers_the_walk_of_its_model_only(monkeypatch):
    # A converted copy per pass (dtype=) is walked when asked and freed with its pass, not kept until the probe ends.
    copies, converted = [], guard.converted

    def spy(*args):
        copy = converted(*args)
        copies.append(weakref.ref(copy))
        return copy

    def loss_fn(output):
        gc.collect()
        alive.append(sum(ref() is not None for ref in copies))
        return output[:, -1].sum()

    monkeypatch.setattr(guard, "converted", spy)
    alive: list[int] = []
    probe(reference.lstm(3, 4), 6, dtype=torch.float64, seeds=3, loss_fn=loss_fn)  # input size read from inside
    assert alive == [1, 1, 1]


def test_zeros_beside_a_step_with_subnormal_entries_are_underflow_whatever_that_steps_norm():
    # Step T-1's gradient holds a normal entry (1e-20) and a subnormal one (1e-40): its norm is far above tiny / eps,
    # so the subnormal entry costs it no precision (not in subnormal_steps), but it shows the decay reaching the
    # subnormal range, and the steps before it, exactly zero in float32 (1e-60 in float64), underflowed.
    class Decay(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("s", torch.tensor([1e-20, 1e-40]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, -1] + self.s * x[:, -2] + (x[:, :-2] * 1e-60).sum(1)

    profile = probe(Decay(), 6)
    assert profile.norms[:4].tolist() == [0.0] * 4 and profile.zeros == "underflow"
    assert profile.subnormal_steps.size == 0


def test_the_callers_grad_mode_is_back_after_a_forward_that_switches_it_globally():
    class Clobber(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.rnn(x)[0]
            torch.set_grad_enabled(False)  # bookkeeping that forgets to switch it back
            return out

    with contextlib.suppress(Exception):
        probe(Clobber(), 5)
    assert torch.is_grad_enabled()


def test_wrapped_callables_of_one_class_keep_their_own_signatures():
    class Logged:  # a decorator class: functools.update_wrapper gives each instance the signature it wraps
        def __init__(self, fn):
            functools.update_wrapper(self, fn)
            self.fn = fn

        def __call__(self, *args):
            return self.fn(*args)

    rnn = nn.RNN(3, 4, batch_first=True)
    stateless = Logged(lambda x: rnn(x)[0])
    stateful = Logged(lambda x, h0: rnn(x, h0)[0])  # the probe passes None for the state it requires
    assert probe(stateless, 5, input_size=3).ratio == probe(stateful, 5, input_size=3).ratio


def test_the_backward_pass_starts_from_a_contiguous_gradient():
    class Viewing(torch.autograd.Function):  # a hand-written backward that views its gradient
        @staticmethod
        def forward(ctx, x):
            return x * 2.0

        @staticmethod
        def backward(ctx, g):
            return (g.view(-1) * 2.0).view_as(g)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 6, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Viewing.apply(self.rnn(x)[0][:, -1])

    assert probe(Head(), 8).norms[-1] > 0


def test_saturated_cells_read_as_the_recomputed_cell_states_read_them(monkeypatch):
    # tanh(c_t) rounds to 1 in float32 (c_t grows by 0.5 per step): the quotient o - h^2/o would read the rounding of
    # o_t's two computations instead; the recomputed c_t reads 1 - tanh^2 c_t = 0, and the probe says so.
    lstm = nn.LSTM(2, 4, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(0.05)
        lstm.bias_ih_l0.copy_(torch.tensor([12.0] * 8 + [math.atanh(0.5)] * 4 + [0.3] * 4))
    results = []
    for slope in (scans.cell_slope, lambda h, o, module: None):
        monkeypatch.setattr(scans, "cell_slope", slope)
        try:
            results.append(probe(lstm, 30, measure="cell").sample_norms.tolist())
        except GradHealthError as exc:
            results.append(type(exc).__name__)
    assert results[0] == results[1]


def test_seeds_under_inference_mode():
    model = reference.lstm(3, 4)
    expected = probe(model, 8, seeds=3).ratio
    with torch.inference_mode():
        assert probe(model, 8, seeds=3).ratio == expected


def test_a_module_that_forward_registers_is_removed_after_each_pass():
    class Lazy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)
            self.drop: nn.Module | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop is None:
                self.drop = nn.Dropout(0.9)  # built on the first call, in train mode as every new module
            return self.drop(self.rnn(x)[0])

    model = Lazy()
    pooled = probe(model, 6, seeds=2, loss_fn=lambda y: y[:, -1].sum())  # one pass per seed (loss_fn=)
    alone = probe(model, 6, seed=1, loss_fn=lambda y: y[:, -1].sum())  # each pass builds it afresh
    np.testing.assert_array_equal(pooled.seed_profiles[1].sample_norms, alone.sample_norms)
    assert model.drop is None and "drop" not in model._modules  # the model as it was
