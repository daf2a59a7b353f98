"""Before a long probe: an estimate of the memory it holds until its backward pass, refused when the device has not
that much.

The memory grows with the sequence: an nn.RNN(2, 2) on a batch of 8 keeps about 6 KB of graph per step on CPU
(autograd's per-step nodes, not the tensors' values), 6 GB at 10**6 steps, unless its fused modules run in segments
(`taps/segments.py`, measure="input"). Probes of `CHECK_FROM_STEPS` or more first run the model's forward at two short
lengths as the long run will (in segments where it will be), take the growth per step of the memory in use, and
refuse before the long run when the estimate exceeds what is available.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from dataclasses import replace
from typing import Any

import torch

from pytest_gradhealth.engine import guard
from pytest_gradhealth.engine.forward import model_name, run_forward
from pytest_gradhealth.engine.inputs import make_inputs
from pytest_gradhealth.engine.options import DEFAULT_BATCH_SIZE, ProbeOptions
from pytest_gradhealth.engine.taps import segments
from pytest_gradhealth.errors import GradHealthError, InvalidArgumentError

# Probes shorter than this are not estimated (its pilot, PILOT_STEPS, costs about 5% of a probe of this length).
CHECK_FROM_STEPS = segments.SEGMENT_FROM_STEPS
PILOT_STEPS = (256, 512)
PILOT_SEGMENT = 16  # shorter than the long run's (about sqrt(steps)): more states kept per step, an upper bound
# The backward pass holds the graph and the gradients it builds at once. Calibration, nn.RNN(2, 2), batch 8, 10**5
# steps, peak RSS growth against the estimate: unsegmented (measure="hidden"), 0.59 GiB against 4.2 KB per step of
# forward growth (1.39x); in segments, 990 bytes per step against 169 bytes of forward growth plus the profile's own.
BACKWARD_FACTOR = 1.5


def check_fits(model: Any, options: ProbeOptions, facts: Any) -> None:
    """Raise InvalidArgumentError, with the estimate and what to pass instead, when a probe of `CHECK_FROM_STEPS` or
    more steps would take more memory than `facts.device` has available. Nothing is run for shorter probes, packed
    batches, where the memory in use or available cannot be read, or where the model does not run at the pilot's
    lengths (a model made for one sequence length: the probe itself then says what it needs)."""
    if options.run_len < CHECK_FROM_STEPS or options.packed:
        return
    available = available_bytes(facts.device)
    if available is None or in_use_bytes(facts.device) is None:
        return
    try:
        per_step, fixed = _growth(model, options, facts)
    except GradHealthError:
        return
    per_step = BACKWARD_FACTOR * per_step + _profile_bytes_per_step(options, facts)
    needed = BACKWARD_FACTOR * fixed + per_step * options.run_len
    if needed <= available:
        return
    fits = max(0, int((available - BACKWARD_FACTOR * fixed) / per_step))
    raise InvalidArgumentError(
        f"probing {model_name(model)} over {options.run_len} steps (batch {_batch(options)}) needs "
        f"about {_gib(needed)} of memory on {facts.device}: what it keeps grows by {per_step / 1024:.1f} KiB per step "
        f"(measured over {PILOT_STEPS[0]} and {PILOT_STEPS[1]} steps), and {_gib(available)} is available. "
        f"Pass a shorter seq_len (about {fits} steps fit), or a smaller batch_size= (it grows with the batch)"
    )


def _profile_bytes_per_step(options: ProbeOptions, facts: Any) -> float:
    """What the probe itself adds per step to the model's forward: the measured gradient and three temporaries of its
    size, and its float64 norms per sample and the arrays made from them (about 8)."""
    features = max(facts.input_size or 0, facts.hidden_size or 0, 1)
    return _batch(options) * (8 * 8 + 4 * features * torch.finfo(facts.dtype).bits // 8)


def _batch(options: ProbeOptions) -> int:
    return options.inputs_batch if options.inputs is not None else options.batch_size or DEFAULT_BATCH_SIZE


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _growth(model: Any, options: ProbeOptions, facts: Any) -> tuple[float, float]:
    """Bytes per step, and fixed bytes, of the memory the model's forward keeps for its backward, from two short runs
    on inputs like the probe's (drawn, or the first steps of those given), under the probe's guard."""
    used = []
    given = options.inputs
    for steps in PILOT_STEPS:
        inputs = None if given is None else given.narrow(options.window.seq_axis(given), 0, steps)  # type: ignore[union-attr,arg-type]
        short = replace(options, seq_len=steps, warmup=0, checkpoints=None, lengths=None, inputs=inputs, seeds=None)
        with guard.guarded(model, options.mode, facts.device, options.seed) as guarded, contextlib.ExitStack() as stack:
            run_model = guard.converted(guarded, facts.dtype, facts.device, facts.model_dtype, facts.model_device)
            if options.measure == "input":  # as the long run will: its fused modules in segments
                segments.run_in_segments(run_model, steps, stack, segment=PILOT_SEGMENT)
            generator = torch.Generator(device="cpu").manual_seed(options.seed)
            x = make_inputs(short, generator, facts.vocab_size, facts.input_size, facts.dtype, facts.device)
            if x.is_floating_point():
                x.requires_grad_(True)
            before = in_use_bytes(facts.device)
            output = run_forward(run_model, x, short)
            used.append(in_use_bytes(facts.device) - before)  # type: ignore[operator]
            del output
    per_step = max(0.0, (used[1] - used[0]) / (PILOT_STEPS[1] - PILOT_STEPS[0]))
    return per_step, max(0.0, used[0] - per_step * PILOT_STEPS[0])


def available_bytes(device: torch.device) -> int | None:
    """Memory the probe may still take: CUDA's free memory on the device, or Linux's MemAvailable (None elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@functools.lru_cache(maxsize=1)
def _mallinfo2() -> Any:
    """glibc's mallinfo2, or None where the C library has none (macOS, musl, glibc before 2.33)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _Mallinfo2
    return function


def in_use_bytes(device: torch.device) -> int | None:
    """Bytes allocated now: CUDA's allocator on the device, or glibc's heap and mmapped blocks on CPU (where torch's
    CPU allocator takes its memory); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    mallinfo = _mallinfo2() if device.type == "cpu" else None
    if mallinfo is None:
        return None
    info = mallinfo()
    return int(info.uordblks + info.hblkhd)
