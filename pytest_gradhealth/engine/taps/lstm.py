"""What the state taps share: an LSTM's path from c_t through h_t, and each step's share of the weight gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def through_hidden(
    g_h: torch.Tensor, x: torch.Tensor, h_prev: torch.Tensor, c: torch.Tensor, module: nn.Module, suffix: str
) -> torch.Tensor:
    """The share of dL/dc_t that goes through h_t = o_t * tanh(c_t) (times W_hr with projections), given dL/dh_t.

    The output gate o_t is recomputed from the step's input and previous hidden state with the LSTM's weights
    (`weight_ih{suffix}`, ...; gate order i, f, g, o).
    """

    def weight(name: str) -> torch.Tensor | None:
        return getattr(module, name + suffix, None)

    rows = slice(3 * c.shape[-1], 4 * c.shape[-1])
    pre = x @ weight("weight_ih")[rows].T + h_prev @ weight("weight_hh")[rows].T  # type: ignore[index]
    if weight("bias_ih") is not None:
        pre = pre + weight("bias_ih")[rows] + weight("bias_hh")[rows]  # type: ignore[index]
    if weight("weight_hr") is not None:
        g_h = g_h @ weight("weight_hr")
    return g_h * torch.sigmoid(pre) * (1 - torch.tanh(c) ** 2)


def weight_terms(aliases: dict[str, list[torch.Tensor]], grads: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each weight copy's gradient, by weight name: the term that its step's use of the weight adds to dL/dW."""
    terms, i = {}, 0
    for name, copies in aliases.items():
        terms[name] = grads[i : i + len(copies)]
        i += len(copies)
    return terms


def contributions(aliases: dict[str, list[torch.Tensor]], grads: list[torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The norm of each step's term in the gradient of each recurrent weight, or None when none were asked for."""
    if not aliases:
        return None
    return {
        name: np.array([float(torch.linalg.vector_norm(t.to(torch.float64))) for t in terms])
        for name, terms in weight_terms(aliases, grads).items()
    }
