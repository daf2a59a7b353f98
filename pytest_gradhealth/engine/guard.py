"""The guard: the probe runs on the user's model and leaves it, and the global random state, as they were."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import itertools
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.errors import ModelInterfaceError

# A module's tables that a forward may change, after its attributes (`__dict__`, which holds them and the train flag):
# what it registers, reassigns or deletes (a parameter, a buffer, a submodule, a hook, an attribute) is put back as
# it was, entry by entry, after the probe.
_TABLES = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_modules",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextlib.contextmanager
def guarded(model: Any, mode: str, device: torch.device, seed: int) -> Iterator[Any]:
    """Put the model in the probe's mode, gradients on and the global RNG on `seed`; restore all of it after.

    Restored: every submodule's attributes, train flag and tables (the parameters, buffers, submodules and hooks
    that forward registers, reassigns or deletes), every parameter's and buffer's values bit for bit, dtype and
    shape (forward may renormalise an embedding or clamp a weight in place, update a running statistic, resize a
    buffer), every parameter's requires_grad and .grad (a forward may run a backward pass of its own), and the
    caller's grad mode (the probe's own pass needs gradients under a caller's no_grad or inference_mode).
    """
    if device.type == "cuda":
        torch.cuda.init()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    # Listed afresh at every pass (not from the probe's walk): a forward may have registered a module the pass before.
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    # Each module's attributes and tables; a scripted module's tables are torch.jit's own wrappers, with no Python
    # state to restore. Empty ones are only emptied again after (most hook tables: nothing to copy).
    tables = [t for d in map(vars, modules) for t in (d, *map(d.get, _TABLES)) if isinstance(t, (dict, set))]
    copies = [(t, t.copy()) for t in tables if t]
    empty = [t for t in tables if not t]
    # The tensors' values (model.parameters() and buffers, each once however many modules share it)
    own = {id(t): t for m in modules for t in itertools.chain(m._parameters.values(), m._buffers.values())}
    tensors = [_saved(t) for t in own.values() if t is not None]
    cudnn_off = device.type == "cuda" and mode == "eval"  # cuDNN's RNN backward refuses to run in eval mode
    # The global generators' states (what torch.random.fork_rng saves, without its per-call checks), and the grad mode,
    # which a forward may switch globally (torch.set_grad_enabled as a function).
    rng = _global_states(cuda_devices)
    grad_enabled = torch.is_grad_enabled()
    watch = _WATCH.get()
    try:
        with contextlib.ExitStack() as stack:
            if cudnn_off:
                stack.enter_context(torch.backends.cudnn.flags(enabled=False))
            if torch.is_inference_mode_enabled():
                stack.enter_context(torch.inference_mode(False))
            if not torch.is_grad_enabled():
                stack.enter_context(torch.enable_grad())
            # Dropout in train mode draws from the global generators. Seed only those saved above: torch.manual_seed
            # would also queue a seed that a not yet initialised CUDA applies after the probe (and capture a stack
            # trace to do so, a large share of a small probe's cost).
            torch.default_generator.manual_seed(seed)
            for index in cuda_devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            seeded = _global_states(cuda_devices) if watch is not None else None
            for m, flag in zip(modules, flags, strict=True):
                if flag != (mode == "train"):  # what Module.__setattr__ does with a bool, without its slow checks
                    object.__setattr__(m, "training", mode == "train")
            try:
                yield model
            finally:
                if watch is not None:  # whether the model drew from a global generator
                    now = _global_states(cuda_devices)
                    watch.append(any(not torch.equal(a, b) for a, b in zip(now, seeded or (), strict=True)))
    finally:
        torch.set_grad_enabled(grad_enabled)
        torch.default_generator.set_state(rng[0])
        for index, state in zip(cuda_devices, rng[1:], strict=False):
            torch.cuda.set_rng_state(state, index)
        for table in filter(None, empty):
            table.clear()
        for table, saved in copies:  # each module's attributes first (the train flag among them), then its tables
            if _changed(table, saved):
                table.clear()
                table.update(saved)
        for saved in tensors:
            _restore(*saved)


# Set by `watching_global_draws`: each guarded pass appends whether the model drew from a global torch generator.
_WATCH: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("gradhealth_global_draws", default=None)


@contextlib.contextmanager
def watching_global_draws() -> Iterator[list[bool]]:
    """Within: every guarded pass notes whether the model's forward drew from a global torch generator (dropout in
    eval mode through F.dropout(training=True), noise from torch.randn_like): one flag per pass."""
    drew: list[bool] = []
    token = _WATCH.set(drew)
    try:
        yield drew
    finally:
        _WATCH.reset(token)


def _global_states(cuda_devices: list[int]) -> list[torch.Tensor]:
    return [torch.default_generator.get_state()] + [torch.cuda.get_rng_state(index) for index in cuda_devices]


def _changed(table: Any, saved: Any) -> bool:
    """Whether a module's table (a dict, or a set of names) holds other entries than `saved` (values by identity)."""
    if isinstance(table, set):
        return table != saved
    return table.keys() != saved.keys() or not all(map(operator.is_, table.values(), saved.values()))


_Saved = tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor | None, torch.Tensor | None]


def _saved(tensor: torch.Tensor) -> _Saved:
    """A parameter's or buffer's values, requires_grad, and .grad with its values."""
    if nn.parameter.is_lazy(tensor):
        raise ModelInterfaceError(
            f"the model has an uninitialised lazy {'parameter' if isinstance(tensor, nn.Parameter) else 'buffer'} "
            "(nn.LazyLinear and the like take their shape from the first input they see): run the model once on a "
            "batch of its real inputs before probing it, so that the probe measures the model you train"
        )
    grad = tensor.grad if tensor.is_leaf else None  # a computed buffer has no .grad of its own
    return tensor, tensor.detach().clone(), tensor.requires_grad, grad, None if grad is None else grad.detach().clone()


def _restore(tensor: torch.Tensor, values: torch.Tensor, requires_grad: bool, grad: Any, grad_values: Any) -> None:
    _put_back(tensor, values)
    if tensor.requires_grad != requires_grad:
        tensor.requires_grad_(requires_grad)
    if tensor.grad is not grad:
        tensor.grad = grad
    if grad is not None:
        _put_back(grad, grad_values)


# Integer dtypes of each size: a float tensor is compared through one of these, bit for bit (-0.0 is not +0.0, and a
# NaN equals the same NaN).
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _put_back(tensor: torch.Tensor, saved: torch.Tensor) -> None:
    """`tensor` with `saved`'s dtype, shape and values again, bit for bit, touched only where it changed (a probe is
    often small). `saved` is the guard's own copy: a tensor whose dtype or device changed takes it as its data."""
    if tensor.dtype != saved.dtype or tensor.device != saved.device:
        tensor.data = saved
        return
    if tensor.shape == saved.shape and _same_bits(tensor, saved):
        return
    with torch.no_grad():
        if tensor.shape != saved.shape:
            tensor.resize_(saved.shape)
        tensor.copy_(saved)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = _BITS.get(a.element_size()) if a.is_floating_point() or a.is_complex() else None
    return torch.equal(a.view(bits), b.view(bits)) if bits is not None else torch.equal(a, b)


def dtype_and_device(model: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter or buffer (the defaults for a plain callable)."""
    if isinstance(model, nn.Module):
        modules = kinds.modules_of(model)
        for table in itertools.chain((m._parameters for m in modules), (m._buffers for m in modules)):
            for tensor in table.values():
                if tensor is not None and tensor.is_floating_point():
                    return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def converted(
    model: Any, dtype: torch.dtype, device: torch.device, model_dtype: torch.dtype, model_device: torch.device
) -> Any:
    """The model itself, or a converted copy when another dtype or device was asked (the model is never moved)."""
    if not isinstance(model, nn.Module) or (dtype == model_dtype and _same_device(device, model_device)):
        return model
    # weight_norm, spectral_norm and parametrized RNNs keep computed weights on the graph (an attribute, or nn.RNN's
    # list of flat weights), which deepcopy refuses; forward recomputes them, so the copy starts from detached ones.
    memo = {id(t): t.detach().clone() for m in model.modules() for t in _computed_tensors(vars(m).values())}
    try:
        return copy.deepcopy(model, memo).to(dtype=dtype, device=device)
    except Exception as exc:
        raise ModelInterfaceError(
            f"probing {type(model).__name__} in {dtype} on {device} needs a converted copy of it, and copying "
            f"failed: {type(exc).__name__}: {exc}. Convert the model yourself and probe it without dtype=/device="
        ) from exc


def _computed_tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _computed_tensors(value)
        elif isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.grad_fn is not None:
            yield value


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True
