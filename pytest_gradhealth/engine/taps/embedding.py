"""The embedding tap: token models are measured at the output of the lookup of the probe's tokens.

The lookup is found by what it reads, not by where the module sits: every `torch.nn.functional.embedding` call on
the probe's token tensor (or a view of it) is captured, which covers nn.Embedding (whose forward calls it) and
functional lookups with a weight of the model's own (embedding dropout, tied or masked weights).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from pytest_gradhealth.engine.sequences import BATCH_FEATURE_TIME, BATCH_TIME_FEATURE, Window
from pytest_gradhealth.engine.taps import segments
from pytest_gradhealth.engine.taps.base import TapResult, sequence_result
from pytest_gradhealth.errors import ModelInterfaceError


class EmbeddingTap:
    """Makes every lookup of the probe's tokens a leaf that requires grad, so the gradient can be read there."""

    layer = None

    def __init__(self, window: Window, batch: int, model_name: str) -> None:
        if window.layout == BATCH_FEATURE_TIME:  # tokens have no feature axis: (batch, seq) in, (batch, seq, dim) out
            window = replace(window, layout=BATCH_TIME_FEATURE)
        self.window, self.batch, self.model_name = window, batch, model_name
        self.captured: list[torch.Tensor] = []
        self.steps: list[int | None] = []  # the timestep each lookup reads, where it is one step's view of the tokens
        self.looked_up = False  # whether the model started a lookup of the probe's tokens (which may have failed)
        self.vocab_size: int | None = None  # the fewest rows of a table that looked the probe's tokens up

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        if (
            self.window.seq_len >= segments.SEGMENT_FROM_STEPS
        ):  # a long sequence: its fused modules' graphs held in segments
            segments.run_in_segments(model, self.window.seq_len, stack)
        lookup = F.embedding
        storage = x.untyped_storage().data_ptr()
        axis, stride = self.window.time_axis, x.stride(self.window.time_axis)

        def capturing(indices: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not isinstance(indices, torch.Tensor) or indices.untyped_storage().data_ptr() != storage:
                return lookup(indices, *args, **kwargs)  # another lookup (positions, a decoder's own tokens)
            self.looked_up = True
            weight = args[0] if args else kwargs.get("weight")
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                rows = int(weight.shape[0])
                self.vocab_size = rows if self.vocab_size is None else min(self.vocab_size, rows)
            output = lookup(indices, *args, **kwargs)
            leaf = output.detach().requires_grad_(True)
            self.captured.append(leaf)
            # x[:, t] (or x[t] time-major) starts t strides into the tokens: a loop may read them in any order
            offset = indices.storage_offset() - x.storage_offset()
            one_step = indices.dim() == x.dim() - 1 and indices.shape[0] == x.shape[1 - axis]
            one_step = one_step and stride > 0 and offset % stride == 0
            self.steps.append(offset // stride if one_step else None)
            return leaf

        F.embedding = capturing

        def restore() -> None:
            F.embedding = lookup

        stack.callback(restore)
        return x

    @property
    def embedding_dim(self) -> int | None:
        return int(self.captured[0].shape[-1]) if self.captured else None

    def measured(self) -> list[torch.Tensor]:
        """The lookups' outputs in time order: one lookup of the whole sequence, or one per timestep."""
        captured, window = self.captured, self.window
        if not captured:
            raise ModelInterfaceError(
                f"token inputs need an nn.Embedding (or an F.embedding lookup) of the probe's tokens in the model, "
                f"where the probe measures the gradient, but {self.model_name} looked none up; give float inputs "
                "instead, or forward= to call the model the way it reads them. A model that looks up a copy of its "
                "tokens (tokens.flip(1), a reordering) cannot be measured at its lookups: measure='hidden' measures "
                "its recurrent states instead"
            )
        if len(captured) == 1 and captured[0].dim() >= 3 and captured[0].shape[window.time_axis] == window.seq_len:
            return captured
        if len(captured) == window.seq_len and all(c.shape[0] == self.batch for c in captured):
            # each lookup one step's own view of the tokens: in time order, whatever order the model read them in
            if None not in self.steps and sorted(self.steps) == list(range(window.seq_len)):  # type: ignore[type-var]
                return [c for _, c in sorted(zip(self.steps, captured, strict=True), key=lambda pair: pair[0])]
            return captured
        shapes = [tuple(c.shape) for c in captured]
        raise ModelInterfaceError(
            f"the model's embedding was called {len(captured)} time(s) on the probe's tokens with output shapes "
            f"{shapes[:4]}; the probe expects one call on the whole sequence {window.layout_name} or one call per "
            f"timestep ({window.seq_len})"
        )

    def result(self, grads: list[torch.Tensor]) -> TapResult:
        return sequence_result(grads, self.window)
