"""The fixture forwards each public function through one table: the settings fill what a test leaves out."""

from __future__ import annotations

import inspect

import pytest

from pytest_gradhealth import InvalidArgumentError, probe
from pytest_gradhealth import reference as ref
from pytest_gradhealth.fixture import GradHealth
from pytest_gradhealth.settings import Settings


@pytest.fixture
def gradhealth() -> GradHealth:
    return GradHealth(Settings(seq_len=6, min_ratio=1e-30, batch_size=3))


def test_seq_len_bound_and_batch_come_from_the_settings_unless_given(gradhealth):
    model = ref.rnn(2, 3)
    assert (gradhealth.assert_no_vanishing(model).seq_len, gradhealth.probe(model).batch_size) == (6, 3)
    assert gradhealth.assert_no_vanishing(model, 7, 1e-30).seq_len == 7  # positional, as in the function
    assert gradhealth.probe(model, seq_len=5, batch_size=2).batch_size == 2
    assert gradhealth.probe(model).to_dict() == probe(model, 6, batch_size=3).to_dict()


def test_a_required_argument_left_out_is_named(gradhealth):
    with pytest.raises(InvalidArgumentError, match="assert_memory_horizon needs min_steps=, the horizon to require"):
        gradhealth.assert_memory_horizon(ref.rnn(2, 3))


def test_the_methods_show_the_functions_signatures_with_the_settings_defaults(gradhealth):
    shown = inspect.signature(gradhealth.assert_no_vanishing)
    assert list(shown.parameters) == ["model", "seq_len", "min_ratio", "explain", "options"]
    assert shown.parameters["seq_len"].default is None and shown.parameters["min_ratio"].default is None
    assert shown.parameters["explain"].default is None  # the setting, true unless configured
    assert inspect.signature(gradhealth.assert_no_worse_than).parameters["factor"].default == 10.0
