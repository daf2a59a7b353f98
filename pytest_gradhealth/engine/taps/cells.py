"""The cell-loop tap: a module the model calls once per timestep is measured at its outputs, one per call."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from pytest_gradhealth.engine.sequences import Window
from pytest_gradhealth.engine.taps import lstm
from pytest_gradhealth.engine.taps.base import StateRequest, TapResult, stacked_result, stand_in_forward
from pytest_gradhealth.errors import ModelInterfaceError


class CellStatesTap:
    """Stands in for a cell's forward: records its output (the state after each call) and passes it on."""

    def __init__(self, path: str | None, module: nn.Module, window: Window, request: StateRequest) -> None:
        self.path, self.module, self.window, self.request = path, module, window, request
        self.layer = request.layer
        self.hidden: list[torch.Tensor] = []
        self.cell: list[torch.Tensor] = []
        self.gates: list[tuple[torch.Tensor, torch.Tensor]] = []  # each call's input and previous hidden state
        self.aliases: dict[str, list[torch.Tensor]] = {"weight_hh": []} if request.contributions else {}

    def attach(self, model: Any, x: torch.Tensor, stack: contextlib.ExitStack) -> torch.Tensor:
        if self.path is not None:  # the same module in `model`, which may be a converted copy of the user's
            self.module = model.get_submodule(self.path)
        self.forward = self.module.forward
        stand_in_forward(self.module, self, stack)
        return x

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.request.contributions:
            output = self.forward(*args, **kwargs)
        else:  # this call's own copy of the recurrent weight, so its share of dL/dW can be read
            parameters = self.module._parameters
            saved = parameters["weight_hh"]
            parameters["weight_hh"] = saved.detach().requires_grad_(True)  # type: ignore[assignment]
            self.aliases["weight_hh"].append(parameters["weight_hh"])  # type: ignore[arg-type]
            try:
                output = self.forward(*args, **kwargs)
            finally:
                parameters["weight_hh"] = saved
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
            shown = (
                f"a tensor of shape {tuple(hidden.shape)}"
                if isinstance(hidden, torch.Tensor)
                else type(hidden).__name__
            )
            raise ModelInterfaceError(
                f"the cell returned {shown}; the probe expects the new hidden state of the batch, a tensor "
                "(batch, hidden), or a tuple whose first element is one"
            )
        self.hidden.append(hidden)
        if self.request.measure == "cell":
            # A view, so that the gradient read here is c_t's own path into step t+1; the path through h_t inside
            # the cell is added in `result`, whether the cell computes it in one kernel or in separate ops.
            cell = output[1].view_as(output[1])
            self.cell.append(cell)
            x = args[0] if args else kwargs["input"]
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            self.gates.append((x.detach(), torch.zeros_like(hidden) if hx is None else hx[0].detach()))
            output = (hidden, cell)
        return output

    def measured(self) -> list[torch.Tensor]:
        if len(self.hidden) != self.window.seq_len:
            raise ModelInterfaceError(
                f"the cell {type(self.module).__name__} was called {len(self.hidden)} time(s) in the forward pass; "
                f"the probe expects one call per timestep ({self.window.seq_len}); pass cell= naming the module "
                "the model calls once per step"
            )
        return self.hidden + self.cell + self.aliases.get("weight_hh", [])

    @torch.no_grad()
    def result(self, grads: list[torch.Tensor]) -> TapResult:
        n = self.window.seq_len
        g = torch.stack(grads[:n])
        if self.request.measure == "cell":
            x, h_prev = (torch.stack(t) for t in zip(*self.gates, strict=True))
            c = torch.stack(self.cell)
            g = torch.stack(grads[n : 2 * n]) + lstm.through_hidden(g, x, h_prev, c, self.module, "")
            n *= 2
        contributions = lstm.contributions(self.aliases, grads[n:])
        if contributions is not None:
            contributions = {name: norms[self.window.steps] for name, norms in contributions.items()}
        return stacked_result(g, np.arange(self.window.seq_len), self.window, contributions)
