"""DESIGN.md's guarantees: the model, its gradients and the global random state are left as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_state, model_state, rng_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_gradhealth import probe, reference
from pytest_gradhealth.errors import GradHealthError, ModelInterfaceError


class Classifier(nn.Module):
    """A user-style model: recurrent core with dropout and batch norm on the features."""

    def __init__(self, cls: type[nn.RNNBase] = nn.LSTM, layers: int = 1, batch_first: bool = True) -> None:
        super().__init__()
        self.rnn = cls(4, 8, num_layers=layers, batch_first=batch_first, dropout=0.3 if layers > 1 else 0.0)
        self.drop = nn.Dropout(0.2)
        self.norm = nn.BatchNorm1d(8)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.norm(self.drop(last))


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.gru = nn.GRU(6, 8, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gru(self.embed(tokens))[0]


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], 8)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


def test_parameters_buffers_and_flags_untouched_in_train_mode_with_batch_norm(state_guard):
    model = Classifier()
    model.rnn.weight_hh_l0.requires_grad_(False)  # a frozen parameter stays frozen
    state_guard(model)
    probe(model, 10, mode="train", batch_size=4)
    assert model.norm.num_batches_tracked.item() == 0


def test_existing_grads_kept_and_none_grads_stay_none(state_guard):
    model = Classifier()
    model(torch.randn(4, 6, 4)).sum().backward()
    model.norm.weight.grad = None
    state_guard(model)
    probe(model, 10)


def test_mixed_train_eval_flags_restored_per_submodule(state_guard):
    model = Classifier().train()
    model.drop.eval()
    state_guard(model)
    probe(model, 8, mode="eval")
    probe(model, 8, mode="train")


def test_float64_probe_uses_a_copy_and_leaves_the_float32_model(state_guard):
    model = state_guard(Classifier())
    profile = probe(model, 8, dtype=torch.float64)
    assert profile.dtype == "float64"
    assert next(model.parameters()).dtype == torch.float32


def test_global_rng_untouched_and_next_draw_unchanged():
    model = Classifier(layers=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    probe(model, 8, mode="train", seed=5)  # dropout draws from the global generator inside the probe
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA already started: nothing is queued for it")
def test_no_seed_left_queued_for_a_cuda_not_yet_started():
    # torch.manual_seed queues a seed that CUDA applies when it starts, long after the probe has returned.
    queued = torch.cuda._lazy_seed_tracker.get_calls()
    probe(Classifier(layers=2), 8, mode="train", seed=5)
    assert torch.cuda._lazy_seed_tracker.get_calls() == queued


def test_the_users_cudnn_settings_stay_in_force_where_the_probe_needs_no_change():
    seen = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.cudnn.deterministic)
        return x.cumsum(1)

    with torch.backends.cudnn.flags(enabled=True, deterministic=True):
        probe(model, 5, input_size=3)
    assert seen == [True]


def test_same_seed_same_numbers_even_with_dropout_in_train_mode():
    model = Classifier(layers=2)
    first = probe(model, 12, mode="train", seed=7)
    torch.rand(10)  # the global state moving on between probes does not matter
    second = probe(model, 12, mode="train", seed=7)
    np.testing.assert_array_equal(first.norms, second.norms)
    np.testing.assert_array_equal(first.sample_norms, second.sample_norms)
    assert not np.array_equal(probe(model, 12, mode="train", seed=8).norms, first.norms)


def build(kind: str, layers: int, batch_first: bool, extras: bool) -> tuple[nn.Module, dict]:
    """A model from the property space and the probe options that fit it."""
    if kind == "token":
        return TokenModel(), {}
    if kind == "cell":
        return CellLoop(), {}
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
    if extras:
        return Classifier(cls, layers, batch_first), {"batch_first": batch_first}
    return cls(4, 8, num_layers=layers, batch_first=batch_first), {"batch_first": batch_first}


def measure_options(kind: str, measure: str, checkpoints: int | None, contributions: bool, padded: bool) -> dict:
    """The measure, checkpoints, contributions and lengths of the property space that fit a model of `kind`."""
    if measure == "cell" and kind not in ("lstm", "cell"):
        measure = "hidden"  # only an LSTM has a cell state
    options = {"measure": measure, "checkpoints": checkpoints}
    if padded:
        options["lengths"] = [6, 4, 5]
    elif contributions and measure != "input":
        options["contributions"] = True
    return options


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["rnn", "lstm", "gru", "token", "cell"]),
    layers=st.integers(1, 2),
    batch_first=st.booleans(),
    extras=st.booleans(),
    dtype=st.sampled_from([None, torch.float64]),
    mode=st.sampled_from(["eval", "train"]),
    model_training=st.booleans(),
    with_grads=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    measure=st.sampled_from(["input", "hidden", "cell"]),
    checkpoints=st.sampled_from([None, 2, 4]),
    contributions=st.booleans(),
    padded=st.booleans(),
)
def test_guarantees_hold_across_models_and_options(
    kind,
    layers,
    batch_first,
    extras,
    dtype,
    mode,
    model_training,
    with_grads,
    seed,
    measure,
    checkpoints,
    contributions,
    padded,
):
    torch.manual_seed(seed % 1000)
    model, options = build(kind, layers, batch_first, extras)
    options.update(measure_options(kind, measure, checkpoints, contributions, padded))
    model.train(model_training)
    if with_grads:
        for p in list(model.parameters())[::2]:
            p.grad = torch.randn_like(p)
    before, rng = model_state(model), rng_state()
    first = probe(model, 6, batch_size=3, seed=seed, dtype=dtype, mode=mode, **options)
    assert_same_state(before, model_state(model))
    assert torch.equal(rng, rng_state())
    assert not any("forward" in vars(m) for m in model.modules()), "a replaced forward was left on the model"
    second = probe(model, 6, batch_size=3, seed=seed, dtype=dtype, mode=mode, **options)
    np.testing.assert_array_equal(first.norms, second.norms)
    np.testing.assert_array_equal(first.sample_norms, second.sample_norms)
    assert first.norms.shape == (checkpoints or 6,) and np.isfinite(first.norms).all()


def test_a_buffer_that_forward_reassigns_is_put_back():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls = self.calls + 1  # a new tensor under the same name
            return self.rnn(x)[0]

    model = Counter()
    original = model.calls
    probe(model, 5)
    assert model.calls is original and model.calls.item() == 0


def test_reference_models_leave_every_cuda_generator_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    reference.lstm(4, 8, seed=3)
    assert calls == []


def test_parameters_that_forward_changes_in_place_are_put_back(state_guard):
    class Renormalised(nn.Module):
        """nn.Embedding(max_norm=...) renormalises the rows it looks up, in place; a clamp under no_grad too."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(20, 4, max_norm=0.5)
            self.rnn = nn.GRU(4, 6, batch_first=True)

        def forward(self, x):
            with torch.no_grad():
                self.rnn.weight_hh_l0.clamp_(-0.1, 0.1)
            self.rnn.weight_ih_l0.data.mul_(0.5)  # through .data: no version counter sees it, the values do change
            return self.rnn(self.embed(x))[0]

    model = state_guard(Renormalised())
    probe(model, 8)


def test_buffers_resized_or_registered_in_forward_are_restored_or_removed(state_guard):
    class Growing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)
            self.register_buffer("seen", torch.zeros(2))

        def forward(self, x):
            self.seen.resize_(5).fill_(1.0)
            self.register_buffer("cache", x.detach().sum(0))
            return self.rnn(x)[0]

    model = state_guard(Growing())
    probe(model, 6)
    assert not hasattr(model, "cache") and model.seen.shape == (2,)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode, lambda: torch.set_grad_enabled(False)])
def test_a_callers_no_grad_or_inference_mode_neither_disconnects_the_probe_nor_is_lost(mode):
    model = reference.rnn(3, 4)
    expected = probe(model, 6).norms
    with mode():
        np.testing.assert_array_equal(probe(model, 6).norms, expected)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def weight_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 3)), nn.RNN(3, 4, batch_first=True))


def parametrized() -> nn.Module:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, batch_first=True)
    nn.utils.parametrizations.weight_norm(rnn, "weight_hh_l0")
    return rnn


def spectral_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.utils.spectral_norm(nn.Linear(3, 3)), nn.RNN(3, 4, batch_first=True))


@pytest.mark.parametrize("build", [weight_normed, parametrized, spectral_normed])
def test_a_float64_copy_of_a_model_that_has_run_works_for_reparametrised_weights(build, state_guard):
    model = build()
    model(torch.zeros(1, 2, 3))  # weight_norm's computed weight is now on the graph, which deepcopy refuses
    state_guard(model)
    profile = probe(model, 6, dtype=torch.float64)
    assert profile.dtype == "float64" and profile.norms[-1] > 0
    if build is not spectral_normed:  # spectral norm's power iteration differs by precision
        np.testing.assert_allclose(profile.norms, probe(model, 6).norms, rtol=1e-4)


def test_an_empty_batch_is_refused():
    from pytest_gradhealth import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="empty batch"):
        probe(nn.RNN(3, 4, batch_first=True), 5, inputs=torch.zeros(0, 5, 3))


@pytest.mark.parametrize(("device", "words"), [("meta", "no values"), ("mps", "MPS is not available")])
def test_a_device_that_cannot_be_probed_is_refused(device, words):
    from pytest_gradhealth import InvalidArgumentError

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(InvalidArgumentError, match=words):
        probe(nn.RNN(3, 4, batch_first=True), 5, device=device)


def test_a_model_on_the_meta_device_is_refused_with_a_gradhealth_error():
    from pytest_gradhealth import GradHealthError

    with pytest.raises(GradHealthError, match="meta"):
        probe(nn.RNN(3, 4, batch_first=True, device="meta"), 5)


def _structure(model: nn.Module) -> dict:
    """What model_state does not see: which objects the model holds, where, and its hooks and attributes."""
    return {
        name: (
            {k: id(v) for k, v in m._parameters.items()},
            {k: None if v is None else id(v) for k, v in m._buffers.items()},
            list(m._modules),
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks),
            sorted(k for k in vars(m) if not k.startswith("_")),
        )
        for name, m in model.named_modules()
    }


class Registers(nn.Module):
    """Registers a submodule, a parameter, a buffer over a None one and a hook on its first call."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.register_buffer("last", None)
        self.calls = 0

    def forward(self, x):
        if "head" not in self._modules:
            self.head = nn.Linear(8, 8)
            self.register_parameter("scale", nn.Parameter(torch.ones(8)))
            self.rnn.register_forward_hook(lambda module, args, output: None)
        self.last = x.detach().sum(1)
        self.calls += 1
        return self.head(self.rnn(x)[0]) * self.scale


class Reassigns(nn.Module):
    """Replaces a parameter object, turns requires_grad off and writes -0.0 where +0.0 was."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.gain = nn.Parameter(torch.ones(()))
        self.register_buffer("shift", torch.zeros(8))

    def forward(self, x):
        self.gain = nn.Parameter(torch.full((), 0.5))
        self.rnn.bias_ih_l0.requires_grad_(False)
        self.shift.mul_(-1.0)
        return self.rnn(x)[0] * self.gain + self.shift


class OwnBackward(nn.Module):
    """Runs a backward pass of its own (a regulariser) and zeroes the gradients, as a training step inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)

    def forward(self, x):
        self.zero_grad()
        (self.rnn.weight_hh_l0**2).sum().backward()
        return self.rnn(x)[0]


class Casts(nn.Module):
    """Converts a submodule to float64 in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        self.head.double()
        return self.head(self.rnn(x)[0].double())


class RaisesAfterRegistering(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)

    def forward(self, x):
        self.child = nn.Linear(2, 2)
        self.rnn.register_forward_pre_hook(lambda module, args: None)
        with torch.no_grad():
            self.rnn.weight_hh_l0.zero_()
        raise RuntimeError("boom")


@pytest.mark.parametrize("build", [Registers, Reassigns, OwnBackward, Casts, RaisesAfterRegistering])
def test_what_forward_registers_reassigns_or_changes_is_put_back_bit_for_bit(build, state_guard):
    torch.manual_seed(0)
    model = build()
    if build is OwnBackward:
        for p in model.parameters():
            p.grad = torch.full_like(p, 3.0)  # kept, values and objects, though forward zeroes and accumulates
    grads = [p.grad for p in model.parameters()]
    structure = _structure(model)
    signs = {name: torch.signbit(b).clone() for name, b in model.named_buffers()}
    state_guard(model)
    try:
        probe(model, 6)
    except GradHealthError:
        assert build is RaisesAfterRegistering
    assert _structure(model) == structure
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    for name, buffer in model.named_buffers():
        assert torch.equal(torch.signbit(buffer), signs[name]), f"{name}: -0.0 is not +0.0"


def test_a_model_with_an_uninitialised_lazy_module_is_refused_before_it_runs():
    model = nn.Sequential(nn.RNN(4, 8, batch_first=True), nn.LazyLinear(3))
    calls = []
    model[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ModelInterfaceError, match="run the model once on a batch of its real inputs"):
        probe(model, 6, loss_fn=lambda y: y[0].sum())
    assert not calls and nn.parameter.is_lazy(model[1].weight)
