"""Model factories: a callable that is not an nn.Module and takes no arguments builds the model to probe (a fresh one
per seed with `seeds=`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pytest_gradhealth.errors import ModelForwardError


def is_factory(model: Any) -> bool:
    """A callable that is not an nn.Module and can be called with no arguments: it builds the model to probe."""
    if isinstance(model, nn.Module) or not callable(model):
        return False
    try:
        inspect.signature(model).bind()
    except TypeError:  # it needs an argument: a model function taking the input
        return False
    except ValueError:  # no signature to read (a builtin): not one of the user's factories
        return False
    return True


def build(factory: Callable[[], Any], seed: int) -> Any:
    """The factory's model, its initial draws taken from `seed`; the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # as reference models seed: CUDA's generators are not touched
        try:
            model = factory()
        except Exception as exc:
            raise ModelForwardError(f"the model factory raised {type(exc).__name__}: {exc}") from exc
    return model
