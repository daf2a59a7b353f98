"""The input tap: dL/dx_t at the model's own input tensor."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from pytest_gradhealth.engine.sequences import Window
from pytest_gradhealth.engine.taps import segments
from pytest_gradhealth.engine.taps.base import TapResult, sequence_result


class InputTap:
    """Reads the gradient at the input tensor the model is called with."""

    layer = None

    def __init__(self, window: Window) -> None:
        self.window = window
        self.x = torch.empty(0)

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        if (
            self.window.seq_len >= segments.SEGMENT_FROM_STEPS
        ):  # a long sequence: its fused modules' graphs held in segments
            segments.run_in_segments(model, self.window.seq_len, stack)
        self.x = x.requires_grad_(True)
        return self.x

    def measured(self) -> list[torch.Tensor]:
        return [self.x]

    def result(self, grads: list[torch.Tensor]) -> TapResult:
        return sequence_result(grads, self.window)
