"""`seeds=N`: N independent draws of the probe (inputs and v, and with a model factory the model), pooled."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pytest_gradhealth.engine.options import ProbeOptions
from pytest_gradhealth.engine.sequences import batch_rms
from pytest_gradhealth.errors import ModelForwardError
from pytest_gradhealth.profile import GradientProfile, log10_rms

Measure = Callable[[Any, ProbeOptions], GradientProfile]


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


def measure_seeds(model: Any, options: ProbeOptions, measure: Measure) -> GradientProfile:
    """Measure seeds seed .. seed+N-1 one after another (a fresh model per seed when `model` is a factory) and pool
    them: the samples of every draw side by side, their RMS as the norms, each draw's profile kept."""
    factory = is_factory(model)
    profiles = []
    for seed in range(options.seed, options.seed + options.seeds):  # type: ignore[operator]
        drawn = build(model, seed) if factory else model
        profiles.append(measure(drawn, replace(options, seed=seed, seeds=None)))
    samples = np.concatenate([p.sample_norms for p in profiles], axis=0)
    norms, _ = batch_rms(np.nan_to_num(samples, nan=0.0), ~np.isnan(samples))
    logs = None
    if any(p.log10_sample_norms is not None for p in profiles):  # some draw was renormalised: pool in log10
        with np.errstate(divide="ignore"):
            logs = np.concatenate(
                [np.log10(p.sample_norms) if p.log10_sample_norms is None else p.log10_sample_norms for p in profiles]
            )
        norms = 10.0 ** log10_rms(logs, ~np.isnan(samples))
    first = profiles[0]
    return replace(
        first,
        norms=norms,
        sample_norms=samples,
        batch_size=int(samples.shape[0]),
        seed=options.seed,
        seeds=options.seeds,
        seed_profiles=profiles,
        contributions=None,
        subnormal_steps=_union([p.subnormal_steps for p in profiles]),
        zeros=next((p.zeros for p in profiles if p.zeros is not None), None),
        log10_sample_norms=logs,
    )


def _union(steps: list[np.ndarray | None]) -> np.ndarray | None:
    known = [s for s in steps if s is not None]
    return np.unique(np.concatenate(known)) if known else None
