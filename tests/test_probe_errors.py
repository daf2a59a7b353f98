"""Bad input: each error says what was expected, what was given and how to fix it, before any work is done."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_gradhealth import (
    DisconnectedGradientError,
    GradHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ModelForwardError,
    ModelInterfaceError,
    probe,
)


class Spy(nn.Module):
    """An RNN that counts its forward calls: errors about arguments must come before any."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 5, batch_first=True)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.rnn(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"seq_len": 1}, InvalidArgumentError, "seq_len must be >= 2, got 1"),
        ({"seq_len": 3.0}, InvalidArgumentTypeError, "seq_len must be an int, got float"),
        ({"seq_len": True}, InvalidArgumentTypeError, "seq_len must be an int"),
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be >= 1, got 0"),
        ({"mode": "training"}, InvalidArgumentError, "mode must be one of 'eval', 'train', got 'training'"),
        ({"measure": "weights"}, InvalidArgumentError, "measure must be one of"),
        ({"dtype": torch.int64}, InvalidArgumentError, "dtype must be a floating torch.dtype"),
        ({"dtype": "float65"}, InvalidArgumentError, "got 'float65'"),
        ({"device": "gpu0"}, InvalidArgumentError, "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"),
        ({"loss_fn": 3}, InvalidArgumentTypeError, "loss_fn must be callable, got int"),
        ({"inputs": [[1.0]]}, InvalidArgumentTypeError, "inputs must be a torch.Tensor, got list"),
        ({"inputs": torch.zeros(2, 5, 3)}, InvalidArgumentError, "inputs has 5 timesteps on axis 1"),
        ({"inputs": torch.zeros(2, 4, 3), "batch_size": 3}, InvalidArgumentError, "batch size 2"),
        (
            {"inputs": torch.zeros(2, 4, 3), "input_fn": lambda *a: None},
            InvalidArgumentError,
            "either inputs= or input_fn=",
        ),
    ],
)
def test_bad_arguments_raise_before_the_forward_pass(kwargs, error, words):
    model = Spy()
    kwargs = {"seq_len": 4, **kwargs}
    seq_len = kwargs.pop("seq_len")
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        probe(model, seq_len, **kwargs)
    assert isinstance(info.value, GradHealthError)
    assert model.calls == 0


def test_cuda_asked_where_there_is_none_says_so():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
        probe(nn.RNN(3, 4), 4, device="cuda")


def test_not_a_model():
    with pytest.raises(InvalidArgumentTypeError, match=r"nn.Module or a callable .* got str"):
        probe("lstm", 10)


def test_input_size_that_cannot_be_inferred_asks_for_it():
    with pytest.raises(InvalidArgumentError, match="cannot infer input_size for function.*pass input_size="):

        def function(x):
            return x

        probe(function, 5)


def test_input_that_does_not_fit_names_the_shape_the_probe_used():
    model = nn.Sequential(nn.Linear(3, 4), nn.RNN(5, 6, batch_first=True))
    with pytest.raises(ModelInterfaceError, match=r"input of shape \(8, 5, 3\).*\(batch, seq, \.\.\.\)") as info:
        probe(model, 5)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_model_that_raises_inside_forward_is_reraised_with_context_and_chained():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            raise KeyError("vocabulary not loaded")

    with pytest.raises(ModelForwardError, match="Broken raised KeyError inside forward.*vocabulary") as info:
        probe(Broken(), 5)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (lambda h: "text", "returned str; the probe expects a tensor"),
        (lambda h: h.sum(), r"output has shape \(\): no time step to take"),
        (lambda h: h.argmax(-1), "carries no gradient"),
        (lambda h: h.transpose(0, 1), "output's layout does not match"),
    ],
)
def test_outputs_the_probe_cannot_use(output, words):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return output(self.rnn(x)[0])

    with pytest.raises(ModelInterfaceError, match=words):
        probe(Model(), 5)


def test_loss_fn_must_return_a_scalar():
    with pytest.raises(InvalidArgumentError, match=r"floating scalar tensor, got a tensor of shape \(8, 5, 4\)"):
        probe(nn.RNN(3, 4, batch_first=True), 5, loss_fn=lambda out: out[0])


@pytest.mark.parametrize(
    "forward",
    [
        lambda rnn, x: rnn(x)[0].detach(),
        lambda rnn, x: torch.zeros_like(rnn(x)[0]) * rnn(x)[0],
        lambda rnn, x: rnn(torch.ones_like(x))[0],
    ],
    ids=["detached", "multiplied-by-zero", "ignores-input"],
)
def test_output_that_does_not_depend_on_the_input_is_disconnected_not_vanishing(forward):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return forward(self.rnn, x)

    with pytest.raises(DisconnectedGradientError, match="disconnected graph, not vanishing"):
        probe(Model(), 5)


def test_zero_gradient_at_the_last_step_is_refused_not_shown_as_a_ratio():
    class Delayed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x[:, :-1])[0]  # the last input never reaches the output

    with pytest.raises(ModelInterfaceError, match="gradient at the last timestep is exactly zero"):
        probe(Delayed(), 6)


def test_nan_gradients_are_recorded_and_flagged_never_a_ratio():
    class NanAtFirstStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            out = self.rnn(x)[0]
            # d sqrt(0 * x)/dx = 0 * inf = NaN, only at step 0
            return out + torch.sqrt(x[:, :1, :1] * 0.0)

    profile = probe(NanAtFirstStep(), 6)
    assert not profile.finite
    np.testing.assert_array_equal(profile.nonfinite_steps, [0])
    assert np.isnan(profile.ratio)
    assert np.isfinite(profile.norms[1:]).all()


def test_token_model_without_embedding_is_refused():
    with pytest.raises(ModelInterfaceError, match="need an nn.Embedding"):
        probe(nn.RNN(3, 4, batch_first=True), 5, inputs=torch.zeros(2, 5, 3, dtype=torch.long))


def test_token_index_out_of_range_points_at_vocab_size():
    model = nn.Sequential(nn.Embedding(10, 4), nn.RNN(4, 4, batch_first=True))
    with pytest.raises(ModelInterfaceError, match="vocab_size="):
        probe(model, 5, vocab_size=50)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_out_of_a_generators_range_is_refused(seed):
    with pytest.raises(InvalidArgumentError, match="seed must be"):
        probe(nn.RNN(3, 4, batch_first=True), 5, seed=seed)


@pytest.mark.parametrize("role", ["input_fn", "loss_fn"])
def test_a_failing_user_function_is_named(role):
    def broken(*args):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ModelForwardError, match=f"{role} raised ZeroDivisionError: division by zero"):
        probe(nn.RNN(3, 4, batch_first=True), 5, **{role: broken})


def test_out_of_memory_is_a_gradhealth_error_saying_how_to_shrink_the_probe():
    class Hungry(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with pytest.raises(ModelForwardError, match=r"ran out of memory .* batch_size= or seq_len") as info:
        probe(Hungry(), 5)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
