"""Total state gradients of a fused layer run in one kernel call, by vectorised scans over its recomputed gates.

The one-call path of `FusedStatesTap` reads, from one backward pass, the gradient at the layer's output and at an
extra zero input of every step (`fused.py`). What the kernel keeps inside, a state's path into the next step that is
not additive in its pre-activation (an LSTM's c_t through the forget gate, a GRU's h_t through z_{t+1} * h_t), is a
diagonal linear recurrence over time, added here by a blocked scan in about 2 sqrt(2 seq) vector operations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pytest_gradhealth.engine.taps import lstm


def linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """y_t = a_t * y_{t-1} + b_t along dim 0 from y_{-1} = 0 (or y_t = a_t * y_{t+1} + b_t backwards from the end).

    In blocks of about sqrt(seq / 2) steps, all blocks at once: each block's end from a zero state and its product of
    a, the state entering each block carried from block to block, then each block's steps from that state. About
    2 sqrt(2 seq) vector operations (a few dozen at seq 128); `a` and `b` have the same shape.
    """
    steps = b.shape[0]
    size = max(1, math.isqrt(steps // 2))
    blocks = -(-steps // size)
    extra = blocks * size - steps
    if extra:  # padded where the scan ends, which no other step sees
        ones, zeros = a.new_ones(extra, *a.shape[1:]), b.new_zeros(extra, *b.shape[1:])
        pairs = ((ones, a), (zeros, b)) if reverse else ((a, ones), (b, zeros))
        a, b = (torch.cat(pair) for pair in pairs)
    a, b = a.reshape(blocks, size, *a.shape[1:]), b.reshape(blocks, size, *b.shape[1:])
    a_at, b_at = a.unbind(1), b.unbind(1)  # (blocks, ...) at each step of a block
    within = range(size - 1, -1, -1) if reverse else range(size)
    entering = torch.zeros_like(b_at[0])
    if blocks > 1:
        first, *rest = within
        end = b_at[first]
        for s in rest:
            end = torch.addcmul(b_at[s], a_at[s], end)
        product = a.prod(1)
        into = entering.unbind(0)
        across = range(blocks - 1, 0, -1) if reverse else range(blocks - 1)
        for j in across:
            k = j - 1 if reverse else j + 1
            torch.addcmul(end[j], product[j], into[j], out=into[k])
    y = torch.empty_like(b)
    y_at = y.unbind(1)
    previous = entering
    for s in within:
        previous = torch.addcmul(b_at[s], a_at[s], previous, out=y_at[s])
    y = y.reshape(blocks * size, *y.shape[2:])
    return y[extra:] if reverse else y[:steps]


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
    r, z = torch.sigmoid(lstm.pre_activations(x, h_prev, module, suffix, slice(0, 2 * hidden))).chunk(2, dim=-1)
    into_step = torch.cat([at_gates[..., : 2 * hidden], r * at_gates[..., 2 * hidden :]], dim=-1)
    through_gates = into_step @ getattr(module, "weight_hh" + suffix)
    return linear_scan(_next_step(z), at_output + _next_step(through_gates), reverse=True)


def cell_slope(h: torch.Tensor, o: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
    """dh_t/dc_t = o_t * (1 - tanh^2 c_t) as o_t - h_t^2 / o_t (h_t = o_t * tanh(c_t)), or None where that loses
    precision: h_t is a projection of it, some o_t is not a normal number, or some cell is saturated, 1 - tanh^2 c_t
    within the rounding of o_t's two computations (16 eps), where the recomputed c_t reads it as tanh's own rounding
    does (exactly 0 where tanh(c_t) rounds to 1) and the quotient would read that rounding instead. CPU only: on a
    GPU the kernel's h_t may come from TF32 GEMMs (cuDNN's default), about 1e-3 off the recomputed o_t."""
    finfo = torch.finfo(o.dtype)
    if h.device.type != "cpu" or getattr(module, "proj_size", 0) or float(o.min()) < finfo.tiny:
        return None
    slope = torch.addcmul(o, h, h / o, value=-1.0)
    return None if bool((slope <= o * (16 * finfo.eps)).any()) else slope


def lstm_cell(
    at_hidden: torch.Tensor,
    at_final: torch.Tensor,
    x: torch.Tensor,
    h_prev: torch.Tensor,
    h: torch.Tensor,
    c_initial: torch.Tensor,
    module: nn.Module,
    suffix: str,
) -> torch.Tensor:
    """An LSTM layer's dL/dc_t at every step, from its total dL/dh_t and the gradient at its final cell state c_n.

    dL/dc_t = dL/dh_t * o_t * (1 - tanh^2 c_t) (`lstm.through_hidden`) + f_{t+1} * dL/dc_{t+1}, plus c_n's own
    gradient at the last step (a backward scan), with the gates recomputed. tanh(c_t) is read from the layer's output
    h_t = o_t * tanh(c_t) (`cell_slope`; to within a few units in the last place of o_t, which the two computations
    of the gate differ by); where that would lose precision (see `cell_slope`), c_t is recomputed instead:
    c_t = f_t * c_{t-1} + i_t * g_t, a forward scan.
    """
    hidden = c_initial.shape[-1]
    gates = torch.arange(4 * hidden, device=x.device).reshape(4, hidden)  # i, f, g, o
    f, o = torch.sigmoid(lstm.pre_activations(x, h_prev, module, suffix, gates[1::2].flatten())).chunk(2, dim=-1)
    slope = cell_slope(h, o, module)
    if slope is None:
        pre = lstm.pre_activations(x, h_prev, module, suffix, gates[0::2].flatten())
        written = torch.sigmoid(pre[..., :hidden]) * lstm.tanh(pre[..., hidden:])
        written[0] += f[0] * c_initial
        own = lstm.through_output_gate(at_hidden, o, lstm.tanh(linear_scan(f, written)), module, suffix)
    else:
        own = at_hidden * slope
    own[-1] += at_final
    return linear_scan(_next_step(f), own, reverse=True)
