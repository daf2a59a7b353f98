"""The guard: the probe runs on the user's model and leaves it, and the global random state, as they were."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pytest_gradhealth.engine import kinds
from pytest_gradhealth.errors import ModelInterfaceError


@contextlib.contextmanager
def guarded(model: Any, mode: str, device: torch.device, seed: int) -> Iterator[Any]:
    """Put the model in the probe's mode, gradients on and the global RNG on `seed`; restore all of it after.

    Restored: every submodule's train flag, every parameter's and buffer's values (forward may renormalise an
    embedding or clamp a weight in place, update a running statistic, assign, resize or register a buffer), and the
    caller's grad mode (the probe's own pass needs gradients under a caller's no_grad or inference_mode).
    """
    if device.type == "cuda":
        torch.cuda.init()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    # Listed afresh at every pass (not from the probe's walk): a forward may have registered a module the pass before.
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    names = [set(m._buffers) for m in modules]
    # Each buffer object and its values: forward may update a buffer in place or assign a new tensor to its name.
    buffers = [(m, name, b, b.detach().clone()) for m in modules for name, b in m._buffers.items() if b is not None]
    # model.parameters(), read from the modules already listed (a parameter shared by two modules once)
    own = {id(p): p for m in modules for p in m._parameters.values() if p is not None}
    parameters = [(p, p.detach().clone()) for p in own.values()]
    cudnn_off = device.type == "cuda" and mode == "eval"  # cuDNN's RNN backward refuses to run in eval mode
    # The global generators' states (what torch.random.fork_rng saves, without its per-call checks), and the grad mode,
    # which a forward may switch globally (torch.set_grad_enabled as a function).
    rng = [torch.default_generator.get_state()] + [torch.cuda.get_rng_state(index) for index in cuda_devices]
    grad_enabled = torch.is_grad_enabled()
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
            for m, flag in zip(modules, flags, strict=True):
                if flag != (mode == "train"):  # what Module.__setattr__ does with a bool, without its slow checks
                    object.__setattr__(m, "training", mode == "train")
            yield model
    finally:
        torch.set_grad_enabled(grad_enabled)
        torch.default_generator.set_state(rng[0])
        for index, state in zip(cuda_devices, rng[1:], strict=False):
            torch.cuda.set_rng_state(state, index)
        for m, flag, known in zip(modules, flags, names, strict=False):
            if m.training != flag:
                object.__setattr__(m, "training", flag)
            for name in set(m._buffers) - known:  # registered by forward
                del m._buffers[name]
        for m, name, buffer, saved in buffers:
            m._buffers[name] = buffer
            _put_back(buffer, saved)
        for parameter, saved in parameters:
            _put_back(parameter, saved)


def _put_back(tensor: torch.Tensor, saved: torch.Tensor) -> None:
    """`tensor` with `saved`'s shape and values again, touched only where it changed (a probe is often small)."""
    if tensor.shape == saved.shape and torch.equal(tensor, saved):
        return
    with torch.no_grad():
        if tensor.shape != saved.shape:
            tensor.resize_(saved.shape)
        tensor.copy_(saved)


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
