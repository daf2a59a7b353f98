"""assert_* : probe a model, judge its profile, and fail with a message a person can act on."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pytest_gradhealth.errors import GradientHealthError, InvalidArgumentError, InvalidArgumentTypeError
from pytest_gradhealth.probing import make_options, measure_profile, run_probe
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.sparkline import sparkline

# Worst first: reports sort by this order.
VERDICTS = ("non-finite", "disconnected", "exploding", "vanishing", "ok")


def judge(profile: GradientProfile, min_ratio: float, max_ratio: float) -> str:
    """The verdict on a profile that no assertion judged: the session's min_ratio and max_ratio applied."""
    if not profile.finite:
        return "non-finite"
    if peak_ratio(profile) > max_ratio:
        return "exploding"
    return "vanishing" if not profile.ratio >= min_ratio else "ok"


def assert_no_vanishing(model: Any, seq_len: int, min_ratio: float = 1e-3, **options: Any) -> GradientProfile:
    """Fail unless the earliest step keeps at least `min_ratio` of the last step's gradient (profile.ratio)."""
    __tracebackhide__ = True
    _check_threshold("min_ratio", min_ratio)

    def check(profile: GradientProfile) -> dict[str, Any]:
        verdict = _nonfinite(profile) or ("vanishing" if not profile.ratio >= min_ratio else "ok")
        return _verdict("assert_no_vanishing", verdict, profile, {"min_ratio": min_ratio})

    return _run(model, seq_len, options, check)


def assert_no_exploding(model: Any, seq_len: int, max_ratio: float = 1e3, **options: Any) -> GradientProfile:
    """Fail when any step's gradient norm exceeds `max_ratio` times the last step's."""
    __tracebackhide__ = True
    _check_threshold("max_ratio", max_ratio)

    def check(profile: GradientProfile) -> dict[str, Any]:
        verdict = _nonfinite(profile) or ("exploding" if peak_ratio(profile) > max_ratio else "ok")
        return _verdict("assert_no_exploding", verdict, profile, {"max_ratio": max_ratio})

    return _run(model, seq_len, options, check)


def assert_finite_gradients(model: Any, seq_len: int, **options: Any) -> GradientProfile:
    """Fail when any timestep's gradient is NaN or infinite, naming the first bad step."""
    __tracebackhide__ = True

    def check(profile: GradientProfile) -> dict[str, Any]:
        return _verdict("assert_finite_gradients", _nonfinite(profile) or "ok", profile, {})

    return _run(model, seq_len, options, check)


def assert_memory_horizon(
    model: Any, seq_len: int, min_steps: int, threshold: float = 0.01, **options: Any
) -> GradientProfile:
    """Fail unless the gradient stays at or above `threshold` x the last step's for at least `min_steps` steps back."""
    __tracebackhide__ = True
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 1:
        raise InvalidArgumentError(f"min_steps must be a positive int, got {min_steps!r}")
    if isinstance(seq_len, int) and min_steps > seq_len - 1:
        raise InvalidArgumentError(
            f"min_steps={min_steps} can never be met at seq_len={seq_len}: the horizon is at most seq_len - 1 = "
            f"{seq_len - 1}; raise seq_len or lower min_steps"
        )
    _check_threshold("threshold", threshold, upper=1.0)

    def check(profile: GradientProfile) -> dict[str, Any]:
        verdict = _nonfinite(profile) or ("vanishing" if profile.horizon(threshold) < min_steps else "ok")
        thresholds = {"min_steps": min_steps, "threshold": threshold}
        return _verdict("assert_memory_horizon", verdict, profile, thresholds)

    return _run(model, seq_len, options, check)


def assert_no_worse_than(
    model: Any, reference: Any, seq_len: int, factor: float = 10.0, **options: Any
) -> GradientProfile:
    """Fail when the model's ratio is more than `factor` times smaller than the reference's, measured the same way.

    `reference` is a model (probed with the same options) or a `GradientProfile` measured before.
    """
    __tracebackhide__ = True
    _check_threshold("factor", factor, lower=1.0)
    if isinstance(reference, GradientProfile):
        if reference.seq_len != seq_len:
            raise InvalidArgumentError(
                f"the reference profile was measured at seq_len={reference.seq_len}, not {seq_len}: ratios at "
                "different lengths are not comparable; probe the reference at the same seq_len"
            )
        ref_profile = reference
    elif callable(reference):
        ref_profile = measure_profile(
            reference, make_options(reference, seq_len, options)
        )  # a yardstick, not a probe to report
    else:
        raise InvalidArgumentTypeError(
            f"reference must be a model or a GradientProfile, got {type(reference).__name__}"
        )
    if not (ref_profile.finite and ref_profile.ratio > 0):
        raise InvalidArgumentError(
            f"the reference {ref_profile.model} has no usable ratio at seq_len={seq_len} "
            f"(ratio={ref_profile.ratio:.3g}, finite={ref_profile.finite}): pick a reference whose gradient reaches "
            "the first step, or a shorter seq_len, or dtype=torch.float64"
        )
    min_ratio = ref_profile.ratio / factor

    def check(profile: GradientProfile) -> dict[str, Any]:
        verdict = _nonfinite(profile) or ("vanishing" if not profile.ratio >= min_ratio else "ok")
        thresholds = {
            "min_ratio": min_ratio,
            "factor": factor,
            "reference": ref_profile.model,
            "reference_ratio": ref_profile.ratio,
        }
        return _verdict("assert_no_worse_than", verdict, profile, thresholds)

    return _run(model, seq_len, options, check)


# -- shared machinery ------------------------------------------------------------------------------


def peak_ratio(profile: GradientProfile) -> float:
    """The largest norm over the last step's: how far above the latest step's gradient any step climbs."""
    last = float(profile.norms[-1])
    return float(profile.norms.max()) / last if last > 0 else math.inf


def _check_threshold(label: str, value: Any, lower: float = 0.0, upper: float | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{label} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= lower or (upper is not None and value > upper):
        bounds = f"> {lower:g}" + (f" and <= {upper:g}" if upper is not None else "")
        raise InvalidArgumentError(f"{label} must be a finite number {bounds}, got {value!r}")


def _nonfinite(profile: GradientProfile) -> str | None:
    return None if profile.finite else "non-finite"


def _run(
    model: Any, seq_len: int, options: dict[str, Any], check: Callable[[GradientProfile], dict]
) -> GradientProfile:
    __tracebackhide__ = True
    record: dict[str, Any] = {}

    def recorded(profile: GradientProfile) -> dict[str, Any]:
        record.update(check(profile))
        return record

    profile = run_probe(model, make_options(model, seq_len, options), recorded)
    if record["verdict"] != "ok":
        raise GradientHealthError(record["message"])
    return profile


def _verdict(assertion: str, verdict: str, profile: GradientProfile, thresholds: dict[str, Any]) -> dict[str, Any]:
    """The check record: plain data for the report, and the failure message when the verdict is not ok."""
    # plain Python types only: the record travels to the xdist controller, which cannot take numpy scalars
    plain = {k: float(v) if isinstance(v, float) else v for k, v in thresholds.items()}
    record = {"assertion": assertion, "verdict": verdict, "thresholds": plain}
    if verdict != "ok":
        record["message"] = failure_message(assertion, verdict, profile, thresholds)
    return record


def failure_message(assertion: str, verdict: str, profile: GradientProfile, thresholds: dict[str, Any]) -> str:
    """What failed, by how much, where, and what to try: readable without the source."""
    lines = [
        f"{assertion}: gradient {verdict} in {profile.model} at seq_len={profile.seq_len} "
        f"(measure={profile.measure}, batch={profile.batch_size}, seed={profile.seed}, dtype={profile.dtype})"
    ]
    if verdict == "non-finite":
        bad = profile.nonfinite_steps
        lines.append(
            f"  NaN/Inf gradient at {len(bad)} step(s), first at step {int(bad[0])} "
            f"({profile.seq_len - 1 - int(bad[0])} steps back from the last)"
        )
    elif assertion == "assert_no_exploding":
        peak = peak_ratio(profile)
        step = int(profile.steps[int(profile.norms.argmax())])
        lines.append(
            f"  largest norm / last step's = {peak:.3g}, allowed <= {thresholds['max_ratio']:.3g} "
            f"(max_ratio); peak at step {step}"
        )
    elif assertion == "assert_memory_horizon":
        lines.append(
            f"  horizon({thresholds['threshold']:g}) = {profile.horizon(thresholds['threshold'])} steps, "
            f"required >= {thresholds['min_steps']} (min_steps)"
        )
    elif assertion == "assert_no_worse_than":
        lines.append(
            f"  ratio first/last = {profile.ratio:.3g}, required >= {thresholds['min_ratio']:.3g} "
            f"({thresholds['reference']}'s ratio {thresholds['reference_ratio']:.3g} / factor {thresholds['factor']:g})"
        )
    else:
        lines.append(f"  ratio first/last = {profile.ratio:.3g}, required >= {thresholds['min_ratio']:.3g} (min_ratio)")
    if verdict == "vanishing":
        bound = float(thresholds.get("min_ratio", thresholds.get("threshold", 0.0)))
        below = profile.first_step_below(bound)
        if below is not None:
            lines.append(
                f"  falls below {bound:.3g} x the last step's gradient at step {below} "
                f"({profile.seq_len - 1 - below} steps back)"
            )
    if len(profile.underflow_steps) == len(profile.norms) - 1:
        lines.append(
            "  no gradient at all reaches any step before the last: the last output depends on the last input only "
            "(no recurrence, or a layout mismatch between the probe and the model: check batch_first)"
        )
    elif len(profile.underflow_steps):
        lines.append(
            f"  {len(profile.underflow_steps)} step(s) underflowed to exactly zero in {profile.dtype}: "
            "their true size is unknown; probe with dtype=torch.float64 to measure it"
        )
    lines.append(
        f"  rate {profile.rate:.4g} per step, half-life {profile.half_life:.3g} steps, "
        f"horizon(0.01) {profile.horizon()} steps"
    )
    finite = profile.norms[profile.norms > 0]
    finite = finite[finite < math.inf]
    span = f"[{finite.min():.2g} .. {finite.max():.2g}]" if len(finite) else ""
    lines.append(f"  profile (log scale, step 0 -> {profile.seq_len - 1}): {sparkline(profile.norms, 40)} {span}")
    lines.append(f"  hint: {hint(profile, verdict)}")
    return "\n".join(lines)


def hint(profile: GradientProfile, verdict: str) -> str:
    """A next step for the user, by verdict and by the kind of recurrent model that was probed."""
    if verdict == "non-finite":
        return (
            "look for a division by zero, log/sqrt of zero or an overflow in forward; gradient clipping does not "
            "repair NaN"
        )
    if verdict == "exploding":
        return (
            "the recurrent Jacobian's norm exceeds one: scale down weight_hh (orthogonal init with gain < 1, "
            "spectral normalisation), clip gradients in training, or use a gated cell"
        )
    if verdict == "disconnected":
        return "the output does not depend on the input: look for .detach(), torch.no_grad() or a zeroed mask"
    kind = profile.model.lower()
    parts = []
    if "lstm" in kind:
        parts.append(
            "raise the LSTM's forget-gate bias (bias_ih_l*[H:2H]) to 1-3 so the cell state keeps its "
            "gradient; pytest_gradhealth.reference.lstm(forget_bias=2.0) shows the effect"
        )
    elif "gru" in kind:
        parts.append("bias the GRU's update gate towards keeping its state (bias_ih_l*[H:2H] positive)")
    elif "rnn" in kind:
        parts.append(
            "a vanilla RNN keeps a fixed fraction of its gradient per step; use a gated cell (LSTM with a "
            "forget-gate bias, GRU) or an orthogonal weight_hh"
        )
    else:
        parts.append("gate the recurrence (LSTM/GRU) or add a residual/skip path through time")
    if profile.seq_len >= 200:
        parts.append(f"at seq_len={profile.seq_len}, truncated BPTT or attention over the sequence may be needed")
    return "; ".join(parts)
