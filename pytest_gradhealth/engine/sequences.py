"""Timesteps, padded batches and lags: plain values in, plain values out.

A padded batch is measured by lag: profile step t is lag seq_len-1-t, counted back from each sample's own last real
step, so samples of different lengths line up at the step the loss is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from pytest_gradhealth.errors import InvalidArgumentError, InvalidArgumentTypeError, ModelInterfaceError

BATCH_TIME_FEATURE = "batch-time-feature"
TIME_BATCH_FEATURE = "time-batch-feature"
BATCH_FEATURE_TIME = "batch-feature-time"
LAYOUTS = (BATCH_TIME_FEATURE, TIME_BATCH_FEATURE, BATCH_FEATURE_TIME)
_LAYOUT_NAMES = {
    BATCH_TIME_FEATURE: "(batch, seq, ...)",
    TIME_BATCH_FEATURE: "(seq, batch, ...)",
    BATCH_FEATURE_TIME: "(batch, features, seq)",
}


def to_batch_time(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor in `layout` as (batch, seq, ...); token tensors (batch, seq) of a channels-first model are already."""
    if layout == TIME_BATCH_FEATURE:
        return x.transpose(0, 1)
    if layout == BATCH_FEATURE_TIME and x.dim() >= 3:
        return x.movedim(-1, 1)
    return x


def from_batch_time(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A (batch, seq, ...) tensor in `layout` (the inverse of `to_batch_time`)."""
    if layout == TIME_BATCH_FEATURE:
        return x.transpose(0, 1)
    if layout == BATCH_FEATURE_TIME and x.dim() >= 3:
        return x.movedim(1, -1)
    return x


@dataclass(frozen=True)
class Window:
    """Which timesteps of which samples a probe measures: the sequence, its layout, the steps, each sample's length."""

    seq_len: int
    steps: np.ndarray
    lengths: tuple[int, ...] | None
    layout: str = BATCH_TIME_FEATURE

    @property
    def batch_first(self) -> bool:
        return self.layout != TIME_BATCH_FEATURE

    @property
    def time_axis(self) -> int:
        """The time axis of a (batch, seq) or (seq, batch) tensor, and of 3-D ones but channels-first."""
        return 0 if self.layout == TIME_BATCH_FEATURE else 1

    @property
    def batch_axis(self) -> int:
        return 1 if self.layout == TIME_BATCH_FEATURE else 0

    @property
    def layout_name(self) -> str:
        return _LAYOUT_NAMES[self.layout]

    def seq_axis(self, x: torch.Tensor) -> int:
        """The time axis of `x` in this layout."""
        return x.dim() - 1 if self.layout == BATCH_FEATURE_TIME and x.dim() >= 3 else self.time_axis

    def by_lag(self, norms: np.ndarray, at: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """`by_lag` for this window (`at` None: every step 0 .. seq_len-1, in order)."""
        return by_lag(norms, at, self.steps, self.lengths, self.seq_len)


def measured_steps(seq_len: int, checkpoints: int | None) -> np.ndarray:
    """Every timestep, or `checkpoints` evenly spaced ones (rounded to the nearest), always the first and the last."""
    if checkpoints is None:
        return np.arange(seq_len, dtype=np.int64)
    k = np.arange(checkpoints, dtype=np.int64)
    return (k * (seq_len - 1) + (checkpoints - 1) // 2) // (checkpoints - 1)


def normalise_lengths(lengths: Any, seq_len: int, batch: int | None) -> tuple[int, ...]:
    """`lengths=` as a tuple of ints, checked against the batch and seq_len."""
    if isinstance(lengths, (torch.Tensor, np.ndarray)):
        if lengths.ndim != 1:
            raise InvalidArgumentError(f"lengths must be 1-D, one length per sample, got shape {tuple(lengths.shape)}")
        lengths = lengths.tolist()
    if not isinstance(lengths, Sequence) or isinstance(lengths, str):
        raise InvalidArgumentTypeError(
            f"lengths must be a sequence of ints (one per sample), got {type(lengths).__name__}"
        )
    bad = [n for n in lengths if not isinstance(n, (int, np.integer)) or isinstance(n, bool)]
    if bad:
        raise InvalidArgumentTypeError(f"lengths must hold ints, got {bad[0]!r} ({type(bad[0]).__name__})")
    lengths = tuple(int(n) for n in lengths)
    if batch is not None and len(lengths) != batch:
        raise InvalidArgumentError(
            f"lengths has {len(lengths)} entries but the batch has {batch} samples; give one length per sample"
        )
    if not lengths or min(lengths) < 1 or max(lengths) > seq_len:
        raise InvalidArgumentError(f"lengths must lie in 1..seq_len ({seq_len}), got {list(lengths)}")
    if max(lengths) != seq_len:
        raise InvalidArgumentError(
            f"the longest sequence must fill seq_len: lengths reach {max(lengths)} but seq_len is {seq_len}; "
            f"pass seq_len={max(lengths)}"
        )
    return lengths


def packed_as_padded(packed: PackedSequence, batch_first: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A PackedSequence as a zero-padded tensor in the probe's layout, and its lengths in batch order."""
    padded, lengths = pad_packed_sequence(packed, batch_first=batch_first)
    return padded.detach(), tuple(int(n) for n in lengths)


def zero_padding(x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Drawn (batch, seq, ...) inputs with zeros (token 0) past each sample's length, as a padded batch holds them."""
    real = torch.arange(x.shape[1])[None, :] < torch.tensor(lengths)[:, None]  # (batch, seq)
    real = real.reshape(*real.shape, *[1] * (x.dim() - 2)).to(x.device)
    return torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))


def last_steps(y: torch.Tensor, lengths: Sequence[int] | None, seq_len: int, layout: str) -> torch.Tensor:
    """The output at each sample's own last real step (the last step when no lengths were given)."""
    y = to_batch_time(y, layout)
    if lengths is None:
        return y[:, -1]
    if y.shape[0] != len(lengths) or y.shape[1] < seq_len:
        raise ModelInterfaceError(
            f"the model's output has shape {tuple(y.shape)} (batch, seq, ...) but lengths= describes "
            f"{len(lengths)} samples of up to {seq_len} steps: the loss cannot be put on each "
            "sample's last real step; pass loss_fn= to define it"
        )
    last = torch.tensor(lengths, device=y.device) - 1
    return y[torch.arange(y.shape[0], device=y.device), last]


def by_lag(
    norms: np.ndarray, at: np.ndarray | None, steps: np.ndarray, lengths: Sequence[int] | None, seq_len: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each sample's gradient norm at the profile's `steps`, counted back from its own last real step.

    `norms[b, j]` belongs to absolute timestep `at[j]` of sample b (`at` sorted, holding every step a sample reaches
    by lag: the profile's `steps` when no sample is padded). Profile step t is lag seq_len-1-t, which
    sample b reaches at its timestep lengths[b]-1-lag; `valid` is False where that is before its first step (None:
    nowhere). `at` None: every timestep 0 .. seq_len-1.
    """
    if lengths is None and (seq_len if at is None else len(at)) == len(steps):  # the steps are among `at`, in order
        return norms, None  # the common case: nothing to align, and no time spent
    if at is None:
        at = np.arange(seq_len)
    full = np.asarray(lengths or (seq_len,) * norms.shape[0])
    lags = seq_len - 1 - steps
    absolute = full[:, None] - 1 - lags[None, :]
    valid = absolute >= 0
    columns = np.searchsorted(at, np.where(valid, absolute, at[0]))
    return np.take_along_axis(norms, columns, axis=1), valid


def measured_at(steps: np.ndarray, lengths: Sequence[int] | None, seq_len: int) -> list[int]:
    """The absolute timesteps at which some sample reaches one of the profile's steps (by lag)."""
    full = np.asarray(lengths or (seq_len,))
    lags = seq_len - 1 - steps
    shifted = (full[:, None] - 1 - lags[None, :]).ravel()
    return sorted({int(t) for t in shifted if t >= 0})


def batch_rms(norms: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Norms (RMS over the samples that reach each step; `valid` None: every sample reaches every step) and per-sample
    norms (NaN where a sample does not).

    Each step's RMS is taken over its largest norm, so that norms far below 1e-154 do not underflow when squared.
    """
    if valid is None or valid.all():  # the common case in a few ops (each costs tens of us after the probe's kernels)
        squares = np.einsum("bt,bt->t", norms, norms)
        if 1e-290 <= squares.min() and squares.max() <= 1e290:  # no square lost to underflow or overflow; not NaN
            return np.sqrt(squares / norms.shape[0]), norms
    if valid is None:
        valid = np.ones(norms.shape, dtype=bool)
    reached = np.where(valid, norms, 0.0)
    largest = reached.max(axis=0)
    scalable = np.isfinite(largest) & (largest > 0)  # else the RMS is the largest: 0, inf or NaN
    scale = np.where(scalable, largest, 1.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # only in columns replaced by `largest`
        rms = scale * np.sqrt(((reached / scale) ** 2).sum(axis=0) / valid.sum(axis=0))
    return np.where(scalable, rms, largest), np.where(valid, norms, np.nan)
