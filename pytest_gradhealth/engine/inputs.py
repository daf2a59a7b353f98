"""The probe's inputs: drawn from the probe's own generator, or the user's, in the model's layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pytest_gradhealth.engine.options import DEFAULT_BATCH_SIZE, ProbeOptions
from pytest_gradhealth.engine.sequences import from_batch_time, packed_as_padded, zero_padding
from pytest_gradhealth.errors import InvalidArgumentTypeError, ModelForwardError


def make_inputs(
    options: ProbeOptions,
    generator: torch.Generator,
    vocab_size: int | None,
    input_size: int | None,
    dtype: torch.dtype,
    device: torch.device,
    sampled: torch.dtype | None = None,
) -> torch.Tensor:
    """The input tensor in the model's layout: given, from `input_fn`, or drawn (tokens or N(0, 1) floats).

    Floats are drawn in `sampled` (the model's dtype; `dtype` when None) and cast to `dtype`, so that a probe in
    another dtype than the model's sees the same sequences.
    """
    batch = options.batch_size or DEFAULT_BATCH_SIZE
    if options.packed:
        x = packed_as_padded(options.inputs, options.batch_first)[0]  # type: ignore[arg-type]
    elif options.inputs is not None:
        x = _own(options.inputs, options.measure)  # type: ignore[arg-type]
    elif options.input_fn is not None:
        x = call_user(options.input_fn, "input_fn", batch, options.run_len, generator)
        if not isinstance(x, torch.Tensor):
            raise InvalidArgumentTypeError(f"input_fn must return a torch.Tensor, got {type(x).__name__}")
        options.check_inputs(x)
        x = _own(x, options.measure)
    else:  # drawn batch-first whatever the layout, so a model of any layout sees the same sequences
        if vocab_size is not None:
            x = torch.randint(0, vocab_size, (batch, options.run_len), generator=generator)
        else:
            assert input_size is not None
            # Not in float64 for a float32 model: torch's sampler takes 4x as long, a large share of a small probe.
            drawn = _sampler_dtype(sampled or dtype)
            x = torch.randn((batch, options.run_len, input_size), generator=generator, dtype=drawn)
        if options.lengths is not None:
            x = zero_padding(x, options.lengths)  # type: ignore[arg-type]
        x = from_batch_time(x, options.layout).contiguous()  # type: ignore[arg-type]
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def _own(x: torch.Tensor, measure: str) -> torch.Tensor:
    """The probe's own tensor object for a given input. Float inputs of measure="input" are not copied (a batch's
    worth of memory, 4% of a probe's peak at hidden 256): they require a gradient, so a model that writes into them in
    place fails (a leaf that requires grad) before it could change the caller's tensor. Others are copied."""
    return x.detach() if x.is_floating_point() and measure == "input" else x.detach().clone()


def _sampler_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for any other dtype (float16 and bfloat16 are drawn in float32 and cast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def call_user(fn: Callable[..., Any], label: str, *args: Any) -> Any:
    """Call a function the user gave the probe; its failure is re-raised with the function's role, chained."""
    try:
        return fn(*args)
    except Exception as exc:
        raise ModelForwardError(f"{label} raised {type(exc).__name__}: {exc}") from exc
