"""`seeds=N`: N independent draws of the probe (inputs and v, and with a model factory the model), pooled.

Where the rows of a batch cannot interact, the N draws run as one pass: every seed's inputs side by side in one batch,
each seed's own v in the loss on its rows, the result split back by seed. That holds for an nn.Module (not a factory:
each draw is another model) in eval mode (train mode's batch statistics and dropout draws depend on the batch), with
inputs drawn or from input_fn, the default loss, no lengths=, forward= or contributions= (a share of the weights'
gradient summed over the batch). A model whose own forward mixes the rows of a batch in eval mode would be misread;
every other case, and any batched pass that fails, leaves the dtype's range or draws from the global generator (each
seed's pass draws from it seeded with its own seed: dropout forced on in eval mode, noise), runs the seeds one after
another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pytest_gradhealth.engine import guard, kinds
from pytest_gradhealth.engine.factories import build, is_factory
from pytest_gradhealth.engine.forward import Loss, loss_of
from pytest_gradhealth.engine.options import ProbeOptions
from pytest_gradhealth.engine.sequences import batch_rms
from pytest_gradhealth.errors import GradHealthError
from pytest_gradhealth.profile import GradientProfile, log10_rms

Measure = Callable[[Any, ProbeOptions], GradientProfile]
Draw = Callable[[Any, ProbeOptions, Sequence[int]], list[tuple[torch.Tensor, torch.Generator]]]


def measure_seeds(model: Any, options: ProbeOptions, measure: Measure, draw: Draw) -> GradientProfile:
    """Measure seeds seed .. seed+N-1, in one batched pass where the rows cannot interact (see the module's doc), else
    one after another (a fresh model per seed when `model` is a factory), and pool them: the samples of every draw
    side by side, their RMS as the norms, each draw's profile kept."""
    profiles = batched(model, options, measure, draw) if batchable(model, options) else None
    if profiles is None:
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
    bad = ~np.isfinite(np.stack([p.norms for p in profiles])).all(axis=0)
    norms = np.where(bad, np.nan, norms)  # a NaN or inf draw is not hidden in the pool (its samples read as padding)
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


def batchable(model: Any, options: ProbeOptions) -> bool:
    """Whether the seeds can run as one batch: the rows of the batch cannot interact (see the module's doc)."""
    return (
        isinstance(model, nn.Module)
        and options.mode == "eval"
        and options.inputs is None
        and options.loss_fn is None
        and options.lengths is None
        and options.forward is None
        and not options.contributions
        and _one_vocabulary(model, options)
    )


def _one_vocabulary(model: nn.Module, options: ProbeOptions) -> bool:
    """Whether tokens, if drawn, come from one vocabulary known before the pass: given, or the model's embeddings all
    of one size. Else a one-seed pass finds the table that looks the tokens up and draws again from its size, which
    the batched pass, drawing every seed's tokens first, cannot."""
    sizes = {kind.vocab_size(m) for _, m, kind in kinds.contained(model, "embedding") if kind.vocab_size}
    return options.vocab_size is not None or len(sizes) <= 1


def batched(model: Any, options: ProbeOptions, measure: Measure, draw: Draw) -> list[GradientProfile] | None:
    """The seeds' profiles from one pass over every seed's inputs side by side, each seed's v on its rows; None when
    the pass fails or leaves the dtype's range (exact zeros, subnormal values, NaN/inf, a renormalised pass), which
    the one-seed passes report as they should."""
    seeds = range(options.seed, options.seed + options.seeds)  # type: ignore[operator]
    axis = options.window.batch_axis
    try:
        with torch.inference_mode(False):  # the pooled inputs must be able to require a gradient
            drawn = draw(model, options, seeds)
            x = torch.cat([x for x, _ in drawn], dim=axis)
        rows = drawn[0][0].shape[axis]
        generators = [generator for _, generator in drawn]

        def loss(output: Any) -> Loss:  # each seed's v on its rows (an error where the rows are not the batch's)
            return loss_of(output, options, generators, rows * len(generators))

        one = replace(options, seeds=None, inputs=x, input_fn=None, batch_size=None, loss_fn=loss)
        with guard.watching_global_draws() as drew:
            pooled = measure(model, one)
    except GradHealthError:
        return None
    if any(drew):  # one seed for every row's draws: not what each seed's own pass would draw
        return None
    samples = pooled.sample_norms
    out_of_range = pooled.log10_sample_norms is not None or (
        pooled.subnormal_steps is not None and pooled.subnormal_steps.size
    )
    if out_of_range or not (np.isfinite(samples).all() and (samples > 0).all()):
        return None
    profiles = []
    for i, seed in enumerate(seeds):
        own = samples[i * rows : (i + 1) * rows]
        norms, _ = batch_rms(own, None)
        profiles.append(replace(pooled, norms=norms, sample_norms=own, batch_size=rows, seed=seed, contributions=None))
    return profiles


def _union(steps: list[np.ndarray | None]) -> np.ndarray | None:
    known = [s for s in steps if s is not None]
    return np.unique(np.concatenate(known)) if known else None
