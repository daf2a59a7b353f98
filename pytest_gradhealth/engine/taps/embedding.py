"""The embedding tap: token models are measured at the embedding's output, the first differentiable tensor."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from pytest_gradhealth.engine.sequences import Window
from pytest_gradhealth.engine.taps.base import TapResult, sequence_result
from pytest_gradhealth.errors import ModelInterfaceError


class EmbeddingTap:
    """Makes every output of the embedding a leaf that requires grad, so the gradient can be read there."""

    layer = None

    def __init__(self, embedding: nn.Module, window: Window, batch: int) -> None:
        self.embedding, self.window, self.batch = embedding, window, batch
        self.captured: list[torch.Tensor] = []

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)
            self.captured.append(leaf)
            return leaf

        stack.callback(self.embedding.register_forward_hook(hook).remove)
        return x

    def measured(self) -> list[torch.Tensor]:
        """The embedding outputs in time order: one call on the whole sequence, or one call per timestep."""
        captured, window = self.captured, self.window
        if len(captured) == 1 and captured[0].dim() >= 3 and captured[0].shape[window.time_axis] == window.seq_len:
            return captured
        if len(captured) == window.seq_len and all(c.shape[0] == self.batch for c in captured):
            return captured
        shapes = [tuple(c.shape) for c in captured]
        raise ModelInterfaceError(
            f"the model's {type(self.embedding).__name__} was called {len(captured)} time(s) with output shapes "
            f"{shapes[:4]}; the probe expects one call on the whole sequence {window.layout_name} or one call per "
            f"timestep ({window.seq_len})"
        )

    def result(self, grads: list[torch.Tensor]) -> TapResult:
        return sequence_result(grads, self.window)
