"""`probe`: one BPTT pass that measures how much gradient of a loss on the last output reaches each timestep.

The line every probe runs: options -> model facts -> guard -> inputs -> tap -> forward -> loss -> gradient -> profile.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from pytest_gradhealth.engine import guard, kinds, memory, renormalise
from pytest_gradhealth.engine.forward import (
    Loss,
    TokenInputsExpected,
    check_time_axis,
    first_receiver,
    in_the_other_order,
    loss_of,
    model_name,
    refuse_the_other_order,
    run_forward,
)
from pytest_gradhealth.engine.inputs import make_inputs
from pytest_gradhealth.engine.options import (
    DEFAULT_SEED,
    STATE_MEASURES,
    ForwardFn,
    InputFn,
    LossFn,
    ProbeOptions,
    make_options,
)
from pytest_gradhealth.engine.seeds import measure_seeds
from pytest_gradhealth.engine.sequences import (
    BATCH_FEATURE_TIME,
    LAYOUTS,
    TIME_BATCH_FEATURE,
    batch_rms,
    to_batch_time,
)
from pytest_gradhealth.engine.taps.base import Tap
from pytest_gradhealth.engine.taps.embedding import EmbeddingTap
from pytest_gradhealth.engine.taps.inputs import InputTap
from pytest_gradhealth.engine.target import state_tap
from pytest_gradhealth.errors import (
    DisconnectedGradientError,
    GradHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ModelInterfaceError,
)
from pytest_gradhealth.profile import GradientProfile, log10_rms
from pytest_gradhealth.recording import emit


def probe(
    model: nn.Module | Callable[..., Any],
    seq_len: int,
    *,
    input_size: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    inputs: torch.Tensor | PackedSequence | None = None,
    input_fn: InputFn | None = None,
    vocab_size: int | None = None,
    batch_first: bool | None = None,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    mode: str = "eval",
    measure: str = "input",
    name: str | None = None,
    layer: int | None = None,
    module: str | nn.Module | None = None,
    cell: str | nn.Module | None = None,
    checkpoints: int | None = None,
    contributions: bool = False,
    lengths: Sequence[int] | torch.Tensor | None = None,
    layout: str | None = None,
    forward: ForwardFn | None = None,
    warmup: int = 0,
    seeds: int | None = None,
) -> GradientProfile:
    """Run one BPTT pass and measure the gradient norm that a loss on the last output sends to each timestep.

    Inputs are N(0, 1) of shape (batch, seq_len, input_size) drawn from a private generator seeded by `seed`
    (`inputs=` or `input_fn(batch_size, seq_len, generator)` replace them; `vocab_size=` draws integer tokens and
    measures at the output of the model's lookup of them) and passed in the model's `layout` ("batch-time-feature",
    "time-batch-feature" or "batch-feature-time"; `batch_first` for short), by `forward(model, inputs)` when given.
    The default loss is sum over the batch of <v, y_T> with v a fixed random unit vector; `loss_fn(output)` replaces
    it. The model, its gradients and the global random state are left exactly as they were. `dtype`/`device` other
    than the model's probe a copy of it.

    `measure="hidden"`/`"cell"` measure dL/dh_t / dL/dc_t of the recurrent states after each step t instead, in
    `layer` (the top one by default) of the model's nn.RNN/LSTM/GRU (`module=` names it when there are several) or
    at the outputs of a `cell=` called once per step; `contributions=True` adds each step's share of the recurrent
    weights' gradient. `checkpoints=K` measures K evenly spaced steps. `lengths=` (or a PackedSequence input) marks
    a padded batch: the loss is on each sample's last real step and norms are aligned by the lag from it.
    `warmup=K` runs K steps before the measured window (inputs, drawn or given, cover K + seq_len steps; the states
    carry over), so the profile reads the stationary backward dynamics instead of the start from a zero state.
    `seeds=N` measures N independent draws (seeds seed .. seed+N-1 of the inputs and v; when `model` is a factory, a
    callable that is not an nn.Module and takes no arguments, each draw also builds a fresh model under its seed):
    the metrics are medians over them, `profile.interval(metric)` their confidence interval.
    """
    # Every keyword above is a ProbeOptions field of the same name; with no layout given, the model's own is used.
    given = {name: value for name, value in locals().items() if name not in ("model", "seq_len")}
    with kinds.walked_once(model):
        return run_probe(model, make_options(model, seq_len, given))


def run_probe(
    model: Any, options: ProbeOptions, check: Callable[[GradientProfile], dict] | None = None
) -> GradientProfile:
    """Measure, then hand the profile and the verdict of `check` (if any) to the recording observers.

    A disconnected model is recorded with the verdict "disconnected" before its error propagates.
    """
    try:
        profile = measure(model, options)
    except DisconnectedGradientError as exc:
        if exc.profile is not None:
            emit(exc.profile, {"verdict": "disconnected", "message": str(exc)})
        raise
    emit(profile, None if check is None else check(profile))
    return profile


def measure(model: Any, options: ProbeOptions) -> GradientProfile:
    """`measure_profile`, or over the seeds when `options.seeds` is set (`seeds.measure_seeds`); nothing recorded."""
    if options.seeds is None:
        return measure_profile(model, options)
    return measure_seeds(model, options, measure_profile, draw_inputs)


@dataclass(frozen=True)
class ModelFacts:
    """What the probe reads from the model before it runs it."""

    dtype: torch.dtype  # the probe's: asked, or the model's own
    device: torch.device
    model_dtype: torch.dtype
    model_device: torch.device
    vocab_size: int | None  # token inputs are drawn when set
    vocab_inferred: bool  # vocab_size was read from the model, not given: the pass checks it against the lookups
    input_size: int | None  # float inputs of this many features are drawn when set
    # input_size was read from a module inside the model, not given: which module the input reaches is a guess
    inferred: bool
    hidden_size: int | None


def model_facts(model: Any, options: ProbeOptions) -> ModelFacts:
    """The dtype, device, input kind and size, and hidden size of `model`, or an error naming what to pass."""
    if not callable(model):
        raise InvalidArgumentTypeError(
            f"model must be a torch.nn.Module or a callable taking the input tensor, got {type(model).__name__}"
        )
    model_dtype, model_device = guard.dtype_and_device(model)
    if model_device.type == "meta":
        raise ModelInterfaceError(
            f"{model_name(model)}'s parameters are on the meta device: shapes without values, so there is no gradient "
            "to measure; materialise it (to_empty(device='cpu') and load its weights) before probing"
        )
    first = kinds.first_input_module(model)
    vocab_size = options.vocab_size
    if vocab_size is None and first is not None and first[1].vocab_size is not None:
        vocab_size = first[1].vocab_size(first[0])
    input_size = None
    if vocab_size is None and options.inputs is None and options.input_fn is None:
        input_size = options.input_size or _input_size(model, first)
    return ModelFacts(
        dtype=options.dtype or model_dtype,
        device=options.device or model_device,
        model_dtype=model_dtype,
        model_device=model_device,
        vocab_size=vocab_size,
        vocab_inferred=vocab_size is not None and options.vocab_size is None,
        input_size=input_size,
        inferred=input_size is not None and options.input_size is None and (first is None or first[0] is not model),
        hidden_size=kinds.hidden_size_of(model),
    )


def _input_size(model: Any, first: tuple[nn.Module, kinds.ModuleKind] | None) -> int:
    if first is not None and first[1].input_size is not None:
        return first[1].input_size(first[0])
    raise InvalidArgumentError(
        f"cannot infer input_size for {model_name(model)}: it has no nn.RNN/LSTM/GRU, cell, nn.Linear, nn.Conv1d or "
        "module with an input_size attribute to read it from; pass input_size=, inputs= or input_fn="
    )


def measure_profile(model: nn.Module | Callable[..., Any], options: ProbeOptions) -> GradientProfile:
    """`probe` without the recording: validated options in, profile out."""
    with kinds.walked_once(model):
        return _measure_profile(model, options)


def _measure_profile(model: nn.Module | Callable[..., Any], options: ProbeOptions) -> GradientProfile:
    facts = model_facts(model, options)
    memory.check_fits(model, options, facts)  # a long probe that would not fit is refused before it runs
    try:
        profile = _measure(model, options, facts)
    except TokenInputsExpected:
        embedding = kinds.embedding_of(model)
        if embedding is None or options.vocab_size is not None or options.inputs is not None or options.input_fn:
            raise
        # The model looks its input up in an embedding that is not the first module it registers: probe it with
        # tokens of that embedding's vocabulary.
        options = replace(options, vocab_size=kinds.kind_of(embedding).vocab_size(embedding))  # type: ignore[union-attr]
        try:  # the size is read from the model all the same: checked against the lookups
            profile = _measure(model, options, replace(model_facts(model, options), vocab_inferred=True))
        except _VocabularyFound as found:
            options, profile = _redrawn(model, options, found)
    except _VocabularyFound as found:
        options, profile = _redrawn(model, options, found)
    except _InputSizeFound as found:
        # The first module the input reaches is not the one registered first: its input size is the one to draw.
        options = replace(options, input_size=found.input_size)
        profile = _measure(model, options, model_facts(model, options))
    _check_layout(model, options, profile)
    _check_underflowed_everywhere(model, options, profile)
    _check_connected(profile, model)
    return profile


def _check_underflowed_everywhere(model: Any, options: ProbeOptions, profile: GradientProfile) -> None:
    """Never call a gradient that underflowed at every step disconnected: where the probe's dtype is not float64 and
    every norm is zero, a float64 probe tells; if it finds gradient, the error names dtype=."""
    norms = profile.norms
    if norms[-1] != 0.0 or np.any(norms) or profile.dtype == "float64" or not isinstance(model, nn.Module):
        return
    wider = replace(options, dtype=torch.float64)
    try:
        exact = _measure(model, wider, model_facts(model, wider))
    except GradHealthError:
        return
    if np.any(exact.norms > 0.0):
        raise InvalidArgumentError(
            f"the gradient underflowed to exactly zero at every one of the {profile.seq_len} timesteps in "
            f"{profile.dtype} (in float64 the last step gets {exact.norms[-1]:.3g} of it, step 0 "
            f"10^{exact.log10_norms[0]:.1f}): nothing can be measured in {profile.dtype}; pass dtype=torch.float64"
        )


def _measure(model: Any, options: ProbeOptions, facts: ModelFacts) -> GradientProfile:
    """The probe's pass, renormalised where the model allows it (`renormalise.py`): from the start for a sequence long
    enough to leave the dtype's range (its rescaling engages only where the gradient does), else where the plain
    pass left the range."""
    renormalisable = renormalise.possible(model, options)
    chunk = renormalise.first_chunk(facts.dtype)
    plain = None
    profile, out_of_range = None, True
    if renormalisable and options.run_len >= renormalise.chunks_first(model) * chunk:
        first = renormalise.Renormaliser(chunk, options)
        with contextlib.suppress(renormalise.NotRenormalisable):
            profile, out_of_range = _pass(model, options, facts, first)
        if profile is not None and first.engaged and not first.trusted:  # a plain pass to check it against
            plain = _pass(model, options, facts, None)[0]
            if not renormalise.agrees(plain.log10_norms, profile.log10_norms, plain.norms, facts.dtype):
                return plain  # some path between the steps bypasses the chunks' order in time
    if profile is None:
        plain, out_of_range = _pass(model, options, facts, None)
        profile, chunk = plain, 2 * options.run_len  # no chunk tried yet
    if not out_of_range or not renormalisable:
        return profile
    for _ in range(renormalise.TRIES):
        chunk = renormalise.chunk_length(profile.log10_norms, profile.steps, facts.dtype, options.run_len, chunk)
        try:
            profile, out_of_range = _pass(model, options, facts, renormalise.Renormaliser(chunk, options))
        except renormalise.NotRenormalisable:
            return plain or _pass(model, options, facts, None)[0]
        if plain is not None and not renormalise.agrees(
            plain.log10_norms, profile.log10_norms, plain.norms, facts.dtype
        ):
            return plain  # some path between the steps bypasses the recurrent states
        if not out_of_range or chunk == 1 or np.isnan(profile.log10_norms).any():  # shorter chunks cannot fix a NaN
            break
    return profile


def _pass(
    model: Any, options: ProbeOptions, facts: ModelFacts, renormaliser: renormalise.Renormaliser | None
) -> tuple[GradientProfile, bool]:
    """One pass: guard -> inputs -> tap -> forward -> loss -> gradient -> profile; and whether its gradient left the
    dtype's range (underflowed to zero or subnormal values, or overflowed)."""
    window = options.window
    tap: Tap | None = None
    if options.measure in STATE_MEASURES:
        tap = state_tap(
            model, options.measure, options.layer, options.module, options.cell, options.contributions, window
        )
    with guard.guarded(model, options.mode, facts.device, options.seed) as guarded:
        run_model = guard.converted(guarded, facts.dtype, facts.device, facts.model_dtype, facts.model_device)
        x, generator = _draw(model, options, facts, options.seed)
        batch = x.shape[window.batch_axis]
        tokens = not x.is_floating_point()
        if tap is None:
            tap = EmbeddingTap(window, batch, model_name(model)) if tokens else InputTap(window)
        with contextlib.ExitStack() as stack:
            x = tap.attach(run_model, x, stack)
            if renormaliser is not None:
                renormaliser.attach(run_model, stack, tap)
            watched = run_model if facts.inferred else None  # which module the input reaches, when its size was a guess
            try:
                with first_receiver(watched, x, _takes_features) as received:
                    output = run_forward(run_model, x, options)
            except GradHealthError as exc:
                if isinstance(tap, EmbeddingTap) and not tap.looked_up and kinds.embedding_of(run_model) is None:
                    tap.measured()  # the error that says no lookup read the probe's tokens
                _raise_if_another_vocabulary(tap, facts, options, exc)
                _raise_if_another_input_size(received, facts, exc)
                raise
            _raise_if_another_vocabulary(tap, facts, options)
            if renormaliser is not None:
                renormaliser.check_ran(x)
            loss = loss_of(output, options, [generator], batch)
            other = in_the_other_order(loss, options, batch)  # rows flattened: kept for a second look if need be
            grads = _gradients(loss, tap.measured(), model, retain=other is not None)
            result = tap.result(grads)
            # some samples' last steps got nothing from a flattened output: in the other order, more might
            if other is not None and not (reached := result.norms[:, -1] > 0).all():
                again = tap.result(_gradients(other, tap.measured(), model))
                refuse_the_other_order(reached, again.norms[:, -1] > 0, options)
        check_time_axis(loss, run_model, x, options)
    norms, sample_norms = batch_rms(result.norms, result.valid)
    zeros = _zeros(norms, result.subnormal_entries, facts.dtype)
    out_of_range = renormalise.needed(norms, zeros, result.subnormal)
    log10_samples = None
    if renormaliser is not None and renormaliser.engaged:  # norms times known powers of two: take them off in log10
        with np.errstate(divide="ignore"):
            logs = np.log10(result.norms) - renormaliser.log10_factors(batch)[:, window.steps]
        valid = np.ones(logs.shape, dtype=bool) if result.valid is None else result.valid
        log10_samples = np.where(valid, logs, np.nan)
        sample_norms, norms = 10.0**log10_samples, 10.0 ** log10_rms(log10_samples, valid)
    features = tap.embedding_dim if isinstance(tap, EmbeddingTap) else to_batch_time(x, window.layout).shape[-1]
    return GradientProfile(
        norms=norms,
        sample_norms=sample_norms,
        seq_len=options.seq_len,
        steps=options.steps,
        name=options.name or model_name(model),
        model=model_name(model),
        batch_size=batch,
        seed=options.seed,
        dtype=str(facts.dtype).replace("torch.", ""),
        device=str(facts.device),
        measure=options.measure,
        mode=options.mode,
        inputs="tokens" if tokens else "float",
        input_size=int(features),  # type: ignore[arg-type]
        hidden_size=facts.hidden_size,
        layer=tap.layer,
        versions=dict(_versions()),
        contributions=result.contributions,
        subnormal_steps=None if result.subnormal is None else options.steps[result.subnormal],
        zeros=zeros,
        advice=kinds.advice_for(model),
        warmup=options.warmup,
        log10_sample_norms=log10_samples,
    ), out_of_range


def _draw(model: Any, options: ProbeOptions, facts: ModelFacts, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """The inputs drawn under `seed`, and its generator, whose next draw is the default loss's v."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sampled = facts.model_dtype if isinstance(model, nn.Module) else facts.dtype  # a plain callable has none
    x = make_inputs(options, generator, facts.vocab_size, facts.input_size, facts.dtype, facts.device, sampled)
    return x, generator


def draw_inputs(model: Any, options: ProbeOptions, seeds: Sequence[int]) -> list[tuple[torch.Tensor, torch.Generator]]:
    """The inputs a pass of `model` with `options` draws under each of `seeds`, and its generator after them, as the
    pass draws them (an input_fn under the guard: one that reads the global RNG gets it seeded, and leaves it as it
    was)."""
    facts = model_facts(model, options)
    if options.input_fn is None:  # drawn from the probe's own generator: nothing global to guard
        return [_draw(model, options, facts, seed) for seed in seeds]
    drawn = []
    for seed in seeds:
        with guard.guarded(model, options.mode, facts.device, seed):
            drawn.append(_draw(model, options, facts, seed))
    return drawn


# A step next to exact zeros whose norm is below this many times the dtype's smallest normal number is taken to be on
# its way to underflow: a gradient that decays into the subnormal range loses its entries one by one.
_UNDERFLOW_MARGIN = 1e6


def _zeros(norms: np.ndarray, subnormal: np.ndarray | None, dtype: torch.dtype) -> str | None:
    """Why some steps get exactly zero gradient: "underflow" when the nonzero step next to them (towards the loss) has
    subnormal entries (`subnormal`: a flag per step) or a norm within a few orders of the smallest normal number, else
    "structural" (no path reaches them: a convolution's receptive field, a mask, dead ReLUs). None when no step, or
    every step, is zero."""
    if norms.min() > 0.0:  # most profiles: one op
        return None
    zero = np.flatnonzero(norms == 0.0)
    if zero.size == 0 or zero.size == norms.size or zero[-1] == norms.size - 1:
        return None
    neighbour = zero[-1] + 1
    if subnormal is not None and subnormal[neighbour]:
        return "underflow"
    return "underflow" if norms[neighbour] < torch.finfo(dtype).tiny * _UNDERFLOW_MARGIN else "structural"


class _InputSizeFound(Exception):
    """The probe's input reached a module that takes another input size than the one it was drawn with."""

    def __init__(self, input_size: int) -> None:
        super().__init__(input_size)
        self.input_size = input_size


class _VocabularyFound(Exception):
    """The probe's tokens were looked up in a table of another size than the vocabulary they were drawn from."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        self.vocab_size = vocab_size


def _redrawn(model: Any, options: ProbeOptions, found: _VocabularyFound) -> tuple[ProbeOptions, GradientProfile]:
    """The tokens' lookup is not the embedding the vocabulary was read from (positions, say): draw from its size."""
    options = replace(options, vocab_size=found.vocab_size)
    return options, _measure(model, options, model_facts(model, options))


def _raise_if_another_vocabulary(
    tap: Tap, facts: ModelFacts, options: ProbeOptions, exc: Exception | None = None
) -> None:
    """Where the vocabulary was read from the model (not given), and the tables that looked the tokens up have
    another number of rows (the fewest of them: every token must be valid in each), draw again from that."""
    drawn = options.inputs is None and options.input_fn is None
    if not facts.vocab_inferred or not drawn or not isinstance(tap, EmbeddingTap) or tap.vocab_size is None:
        return
    if tap.vocab_size != facts.vocab_size:
        raise _VocabularyFound(tap.vocab_size) from exc


def _takes_features(module: nn.Module) -> bool:
    kind = kinds.kind_of(module)
    return kind is not None and kind.input_size is not None


def _raise_if_another_input_size(received: list[nn.Module], facts: ModelFacts, exc: Exception) -> None:
    if not received:
        return
    size = kinds.kind_of(received[0]).input_size(received[0])  # type: ignore[union-attr,misc]
    if size != facts.input_size:
        raise _InputSizeFound(size) from exc


def _check_layout(model: Any, options: ProbeOptions, profile: GradientProfile) -> None:
    """Never a verdict on a layout mismatch: when no gradient reaches any step before the last, probe the other
    layouts, and if the sequence connects in one of them, say which to pass."""
    norms = profile.norms
    if options.measure != "input" or options.inputs is not None or options.input_fn is not None:
        return  # a state tap reads its module's own layout; given inputs are in the layout the caller says
    if not (norms[-1] > 0.0 and norms[0] == 0.0 and not np.any(norms[:-1])):  # most profiles: two Python tests
        return
    convolutional = any(k.layout == BATCH_FEATURE_TIME for _, _, k in kinds.contained(model, "projection"))
    candidates = [o for o in LAYOUTS if o != options.layout and (o != BATCH_FEATURE_TIME or convolutional)]
    for layout in candidates:
        other = replace(options, layout=layout, batch_first=None)
        try:
            connected = np.any(_pass(model, other, model_facts(model, other), None)[0].norms[:-1] > 0.0)
        except (GradHealthError, _InputSizeFound):  # the model does not run in that layout
            continue
        if connected:
            flag = " (batch_first=False)" if layout == TIME_BATCH_FEATURE else ""
            raise ModelInterfaceError(
                f"in layout={options.layout!r} {options.layout_name} no gradient reaches any step before the last: "
                f"{model_name(model)} reads the probe's timesteps as separate samples. In layout={layout!r} the "
                f"sequence connects: pass layout={layout!r}{flag}"
            )


def _gradients(loss: Loss, measured: list[torch.Tensor], model: Any, retain: bool = False) -> list[torch.Tensor]:
    if not loss.output.requires_grad:
        raise DisconnectedGradientError(
            f"the loss does not depend on the inputs at all: {model_name(model)}'s output carries no gradient "
            "(computed under torch.no_grad, detached, or not from the input). This is a disconnected graph, "
            "not vanishing"
        )
    grads = torch.autograd.grad(loss.output, measured, loss.direction, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(m) if g is None else g for m, g in zip(measured, grads, strict=False)]


def _check_connected(profile: GradientProfile, model: Any) -> None:
    norms = profile.norms
    if norms[-1] == 0.0 and not np.any(norms):
        error = DisconnectedGradientError(
            f"the gradient of the loss is exactly zero at every one of the {profile.seq_len} timesteps: "
            f"{model_name(model)}'s output at the last step does not depend on its input (a detached path, "
            "dead ReLUs, a zeroed mask). This is a disconnected graph, not vanishing"
        )
        error.profile = profile
        raise error
    if norms[-1] == 0.0:
        raise ModelInterfaceError(
            f"the gradient at the last timestep is exactly zero while earlier steps have some: ratios relative to "
            f"it would be meaningless. {model_name(model)}'s last output does not depend on its last input (a delay "
            "or a masked final step); pass loss_fn= to put the loss where the last input matters"
        )


@functools.cache
def _versions() -> dict[str, str]:
    from pytest_gradhealth import __version__

    return {
        "pytest_gradhealth": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
