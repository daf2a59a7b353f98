"""Total state gradients of a fused layer run in one kernel call, by vectorised scans over its recomputed gates.

The one-call path of `FusedStatesTap` reads, from one backward pass, the gradient at the layer's output and at an
extra zero input of every step (`fused.py`). What the kernel keeps inside, a state's path into the next step that is
not additive in its pre-activation (an LSTM's c_t through the forget gate, a GRU's h_t through z_{t+1} * h_t), is a
diagonal linear recurrence over time, added here by an associative scan in log2(seq) vector operations.
"""

from __future__ import annotations

import torch
from torch import nn

from pytest_gradhealth.engine.taps import lstm


def linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """y_t = a_t * y_{t-1} + b_t along dim 0 from y_{-1} = 0 (or y_t = a_t * y_{t+1} + b_t backwards from the end).

    Hillis-Steele: after the pass with stride k, b_t sums the terms of the 2k steps up to t and a_t is their product.
    """
    if reverse:
        return linear_scan(a.flip(0), b.flip(0)).flip(0)
    k = 1
    while k < b.shape[0]:
        b = torch.cat([b[:k], torch.addcmul(b[k:], a[k:], b[:-k])])
        if 2 * k < b.shape[0]:
            a = torch.cat([a[:k], a[k:] * a[:-k]])
        k *= 2
    return b


def _pre_activations(x: torch.Tensor, h_prev: torch.Tensor, module: nn.Module, suffix: str, rows: int) -> torch.Tensor:
    """The first `rows` gate pre-activations of every step: W_ih x_t + W_hh h_{t-1} (+ both biases)."""
    pre = x @ getattr(module, "weight_ih" + suffix)[:rows].T + h_prev @ getattr(module, "weight_hh" + suffix)[:rows].T
    if getattr(module, "bias_ih" + suffix, None) is not None:
        pre = pre + getattr(module, "bias_ih" + suffix)[:rows] + getattr(module, "bias_hh" + suffix)[:rows]
    return pre


def _next_step(a: torch.Tensor) -> torch.Tensor:
    """a_{t+1} at t (zero after the last step)."""
    return nn.functional.pad(a[1:], (0, 0, 0, 0, 0, 1))


def gru_hidden(
    at_output: torch.Tensor,
    at_gates: torch.Tensor,
    x: torch.Tensor,
    h_prev: torch.Tensor,
    module: nn.Module,
    suffix: str,
) -> torch.Tensor:
    """A GRU layer's dL/dh_t at every step, from the gradients at its output and at its input-side pre-activations.

    h_t = (1 - z) * n + z * h_{t-1}, n = tanh(gi_n + r * (W_hn h_{t-1} + b_hn)): h_{t-1} enters step t through
    W_hr and W_hz (gradient dL/dgi_r, dL/dgi_z), through W_hn times r (r * dL/dgi_n), and directly times z_t. So
    dL/dh_t = at_output_t + [dL/dgi_r, dL/dgi_z, r * dL/dgi_n]_{t+1} W_hh + z_{t+1} * dL/dh_{t+1}.
    `at_gates`: (seq, batch, 3 * hidden) dL/dgi_t (gate order r, z, n).
    """
    hidden = h_prev.shape[-1]
    r, z = torch.sigmoid(_pre_activations(x, h_prev, module, suffix, 2 * hidden)).chunk(2, dim=-1)
    into_step = torch.cat([at_gates[..., : 2 * hidden], r * at_gates[..., 2 * hidden :]], dim=-1)
    through_gates = into_step @ getattr(module, "weight_hh" + suffix)
    return linear_scan(_next_step(z), at_output + _next_step(through_gates), reverse=True)


def lstm_cell(
    at_hidden: torch.Tensor,
    at_final: torch.Tensor,
    x: torch.Tensor,
    h_prev: torch.Tensor,
    c_initial: torch.Tensor,
    module: nn.Module,
    suffix: str,
) -> torch.Tensor:
    """An LSTM layer's dL/dc_t at every step, from its total dL/dh_t and the gradient at its final cell state c_n.

    c_t = f_t * c_{t-1} + i_t * g_t (recomputed, a forward scan), and dL/dc_t = dL/dh_t * o_t * (1 - tanh^2 c_t)
    (`lstm.through_hidden`) + f_{t+1} * dL/dc_{t+1}, plus c_n's own gradient at the last step (a backward scan).
    """
    hidden = c_initial.shape[-1]
    pre = _pre_activations(x, h_prev, module, suffix, 3 * hidden)
    i, f = torch.sigmoid(pre[..., : 2 * hidden]).chunk(2, dim=-1)
    written = i * torch.tanh(pre[..., 2 * hidden :])
    written[0] += f[0] * c_initial
    c = linear_scan(f, written)
    own = lstm.through_hidden(at_hidden, x, h_prev, c, module, suffix)
    own[-1] += at_final
    return linear_scan(_next_step(f), own, reverse=True)
