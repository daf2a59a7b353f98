"""The tap protocol: where the probe reads the gradient, and what it read."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pytest_gradhealth.engine.sequences import Window, to_batch_time


@dataclass
class TapResult:
    """Per-sample gradient norms at the profile's steps (by lag), where valid (None: everywhere), and weight
    contributions."""

    norms: np.ndarray
    valid: np.ndarray | None
    contributions: dict[str, np.ndarray] | None = None
    # Per profile step (None: not read): subnormal entries cost some sample's norm precision (see `subnormal_steps`);
    # and some entry is subnormal at all, read only where some sample's norm is below tiny / eps (else all False).
    subnormal: np.ndarray | None = None
    subnormal_entries: np.ndarray | None = None


class Tap(Protocol):
    """Where the gradient is read: attached before the forward pass, read after the backward pass."""

    layer: int | None  # the measured layer of a recurrent module; None where the tap reads no layer

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        """Install what the tap needs in `model` until `stack` closes; return the input to call the model with."""
        ...

    def measured(self) -> list[torch.Tensor]:
        """The tensors to differentiate the loss by, once the forward pass has run."""
        ...

    def result(self, grads: list[torch.Tensor]) -> TapResult:
        """What was measured, from the gradients of the loss at `measured()`."""
        ...


def per_step(grads: list[torch.Tensor], layout: str) -> torch.Tensor:
    """One gradient over the whole sequence, or one per timestep, as a (batch, seq, features) tensor."""
    if len(grads) == 1:
        g = to_batch_time(grads[0].detach(), layout)
        return g if g.dim() == 3 else g.reshape(g.shape[0], g.shape[1], -1)
    return torch.stack([g.detach().reshape(g.shape[0], -1) for g in grads], 1)


def stacked_result(
    g: torch.Tensor, at: np.ndarray, window: Window, contributions: dict[str, np.ndarray] | None = None
) -> TapResult:
    """The result of a tap that stacked one (batch, ...) gradient per timestep `at` (absolute, in order) into
    (len(at), batch, ...): per-sample norms by lag, and which of the profile's steps hold a subnormal entry (not read
    for a padded batch)."""
    flat = g.detach().reshape(g.shape[0], g.shape[1], -1).transpose(0, 1)  # (batch, steps, features)
    at_steps = sample_norms(flat)
    norms, valid = window.by_lag(at_steps, at)
    subnormal = entries = None
    if window.lengths is None:
        subnormal, entries = subnormal_steps(flat, at_steps, np.searchsorted(at, window.steps))
    return TapResult(norms, valid, contributions, subnormal, entries)


# Below this a float64 norm may have lost its squares to underflow (sqrt of the smallest normal number, 1.5e-154).
_SQUARES_UNDERFLOW = 1e-150


def sample_norms(g: torch.Tensor) -> np.ndarray:
    """The norm over the last axis of `g`, in float64, without the underflow of its squares: float64 gradients
    below 1e-154 have squares below float64's range, so those norms are taken of the values over their largest."""
    # One kernel that reads in float64, not a float64 copy and more ops: each op is a share of a small probe.
    norms = torch.linalg.vector_norm(g, dim=-1, dtype=torch.float64)
    if g.dtype == torch.float64 and bool((norms < _SQUARES_UNDERFLOW).any()):
        largest = g.abs().amax(dim=-1)
        scale = torch.where(largest > 0, largest, torch.ones_like(largest))
        scaled = largest * torch.linalg.vector_norm(g / scale[..., None], dim=-1)
        norms = torch.where(norms < _SQUARES_UNDERFLOW, scaled, norms)
    return norms.cpu().numpy()


def sequence_result(grads: list[torch.Tensor], window: Window) -> TapResult:
    """The result of a tap that reads one tensor per sequence or one per timestep, every step in time order."""
    g = per_step(grads, window.layout)
    at_steps = sample_norms(g)
    norms, valid = window.by_lag(at_steps)
    subnormal, entries = (None, None) if window.lengths is not None else subnormal_steps(g, at_steps, window.steps)
    return TapResult(norms, valid, None, subnormal, entries)


def subnormal_steps(g: torch.Tensor, norms: np.ndarray, at: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per timestep of a (batch, seq, features) gradient whose per-sample norms are `norms` (batch, seq), at the
    indices `at` along seq (None: every one): whether subnormal entries (nonzero but below the dtype's smallest normal
    number, where they have lost precision on their way to underflowing to zero) hold a share of some sample's norm
    above the dtype's rounding, where its norm is below tiny / eps (elsewhere a subnormal entry is below the norm's own
    rounding); and whether any entry is subnormal, which is looked for only where some sample's norm is below tiny /
    eps (else no step is near zero, and none is read: all False)."""
    finfo = torch.finfo(g.dtype)
    if not np.fmin.reduce(norms, axis=None) < finfo.tiny / finfo.eps:  # most gradients: one op (NaN ignored)
        none = np.zeros(g.shape[1] if at is None else len(at), dtype=bool)
        return none, none
    small = norms < finfo.tiny / finfo.eps
    # Then the smallest magnitude of the whole tensor first (two fast ops, one temporary of the gradient's size: peak
    # memory is a goal too). Only a zero, a NaN or a subnormal number below it takes the tests below: hardshrink keeps
    # the entries above the largest subnormal number, so what it changes is subnormal (or NaN/inf, which take the
    # exact test).
    if float(g.abs().amin()) >= finfo.tiny or not bool(
        torch.nn.functional.hardshrink(g, finfo.tiny - finfo.tiny * finfo.eps).sub_(g).any()
    ):
        held = np.zeros(small.shape, dtype=bool)
    else:
        held = ((g != 0) & (g.abs() < finfo.tiny)).any(-1).cpu().numpy()  # (batch, seq)
    found, entries = (held & small).any(0), held.any(0)
    return (found, entries) if at is None else (found[at], entries[at])


def stand_in_forward(module: torch.nn.Module, forward: Any, stack: contextlib.ExitStack) -> None:
    """Call `forward` in place of `module`'s own forward until `stack` closes (hooks still run around it)."""
    saved = module.__dict__.get("forward")
    module.forward = forward

    def restore() -> None:
        if saved is None:
            del module.forward
        else:
            module.forward = saved

    stack.callback(restore)


@dataclass(frozen=True)
class StateRequest:
    """What a state tap measures: which measure ('hidden' or 'cell'), in which layer, with weight contributions."""

    measure: str
    layer: int
    contributions: bool
