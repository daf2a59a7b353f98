"""assert_* : probe a model, judge its profile with a check, and fail with a message a person can act on.

Each assertion builds its check object (`checks.py`, which validates the thresholds before any probe runs) and hands
it to one runner, `run_check`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_gradhealth.checks import (
    Check,
    FiniteGradients,
    MemoryHorizon,
    NoExploding,
    NoVanishing,
    NoWorseThan,
    threshold,
)
from pytest_gradhealth.errors import (
    GradHealthError,
    GradientHealthError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    UncertainVerdictError,
)
from pytest_gradhealth.probing import make_options, measure_profile, run_probe
from pytest_gradhealth.profile import GradientProfile

if TYPE_CHECKING:
    from pytest_gradhealth.diagnosis import Diagnosis


def assert_no_vanishing(
    model: Any, seq_len: int, min_ratio: float = 1e-3, explain: bool = True, **options: Any
) -> GradientProfile:
    """Fail unless the earliest step keeps at least `min_ratio` of the last step's gradient (profile.ratio).

    On failure, `explain` (default) diagnoses the model and measures the standard remedies on copies of it to name a
    measured fix (one more probe, and one per remedy that applies: 6 for an LSTM); `explain=False` fails with the
    hint alone."""
    __tracebackhide__ = True
    return run_check(model, seq_len, options, NoVanishing(min_ratio), explain)


def assert_no_exploding(model: Any, seq_len: int, max_ratio: float = 1e3, **options: Any) -> GradientProfile:
    """Fail when any step's gradient norm exceeds `max_ratio` times the last step's."""
    __tracebackhide__ = True
    return run_check(model, seq_len, options, NoExploding(max_ratio))


def assert_finite_gradients(model: Any, seq_len: int, **options: Any) -> GradientProfile:
    """Fail when any timestep's gradient is NaN or infinite, naming the first bad step."""
    __tracebackhide__ = True
    return run_check(model, seq_len, options, FiniteGradients())


def assert_memory_horizon(
    model: Any, seq_len: int, min_steps: int, threshold: float = 0.01, explain: bool = True, **options: Any
) -> GradientProfile:
    """Fail unless the gradient stays at or above `threshold` x the last step's for at least `min_steps` steps back.

    `explain` as for `assert_no_vanishing`."""
    __tracebackhide__ = True
    return run_check(model, seq_len, options, MemoryHorizon(min_steps, threshold), explain)


def assert_no_worse_than(
    model: Any, reference: Any, seq_len: int, factor: float = 10.0, explain: bool = True, **options: Any
) -> GradientProfile:
    """Fail when the model's ratio is more than `factor` times smaller than the reference's, measured the same way.

    `reference` is a model (probed with the same options) or a `GradientProfile` measured before; `explain` as for
    `assert_no_vanishing`.
    """
    __tracebackhide__ = True
    threshold("factor", factor, lower=1.0)
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
    check = NoWorseThan(ref_profile.ratio / factor, factor, ref_profile.model, ref_profile.ratio)
    return run_check(model, seq_len, options, check, explain)


def run_check(model: Any, seq_len: int, options: dict[str, Any], check: Check, explain: bool = True) -> GradientProfile:
    """Probe `model`, record the profile with `check`'s verdict, and raise `GradientHealthError` unless it is ok
    (`UncertainVerdictError`, a subclass, when seeds=N leave the verdict undecided); with `explain`, a vanishing
    failure is diagnosed (`advice`)."""
    __tracebackhide__ = True
    if not isinstance(explain, bool):
        raise InvalidArgumentTypeError(f"explain must be True or False, got {explain!r}")
    check.fits(seq_len)
    record: dict[str, Any] = {}

    def judged(profile: GradientProfile) -> dict[str, Any]:
        diagnosis: list[Diagnosis] = []

        def closing(verdict: str) -> list[str]:
            lines, found = advice(model, profile, verdict, check, options, explain)
            diagnosis.extend(found)
            return lines

        record.update(check.record(profile, closing))
        if diagnosis:
            record["diagnosis"] = diagnosis[0].to_dict()
        return record

    profile = run_probe(model, make_options(model, seq_len, options), judged)
    if record["verdict"] == "uncertain":
        raise UncertainVerdictError(record["message"])
    if record["verdict"] != "ok":
        raise GradientHealthError(record["message"])
    return profile


def advice(
    model: Any, profile: GradientProfile, verdict: str, check: Check, options: dict[str, Any], explain: bool = True
) -> tuple[list[str], list[Diagnosis]]:
    """The closing lines of a failure message, and the diagnosis they come from, if any.

    For a vanishing gradient, with `explain`: `diagnose` (the layers' gates, and the standard remedies measured on
    copies of the model), then the first remedy, least intrusive first, that makes the same check pass. Otherwise a
    hint by verdict and by the layers the model contains.
    """
    if verdict != "vanishing" or not explain:
        return [f"hint: {hint(profile, verdict)}"], []
    from pytest_gradhealth.diagnosing import diagnose

    try:
        diagnosis = diagnose(model, profile.seq_len, **options)
    except GradHealthError as exc:  # a model that cannot be copied or probed again: the hint alone
        return [f"measured fix: not measured ({exc})", f"hint: {hint(profile, verdict)}"], []
    fix = diagnosis.fix(lambda p: check.verdict(p) == "ok")
    if fix is not None:
        return [f"measured fix: {fix.effect(profile)}"], [diagnosis]
    lines = [f"hint: {hint(profile, verdict)}"]
    if diagnosis.what_ifs:
        names = ", ".join(w.change for w in diagnosis.what_ifs)
        lines.insert(0, f"measured fix: none of the standard remedies passes ({names}, each probed on a copy)")
    return lines, [diagnosis]


def hint(profile: GradientProfile, verdict: str) -> str:
    """A next step for the user, by verdict and by the recurrent layers the probed model contains."""
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
    if verdict == "uncertain":
        return (
            "some draws pass and some fail: add seeds (the estimate above), or test a seq_len or threshold the model "
            "clears by a margin; a model this close to the bound may pass or fail after any neutral change"
        )
    if verdict == "disconnected":
        return "the output does not depend on the input: look for .detach(), torch.no_grad() or a zeroed mask"
    parts = [profile.advice or "gate the recurrence (LSTM/GRU) or add a residual/skip path through time"]
    if profile.seq_len >= 200:
        parts.append(f"at seq_len={profile.seq_len}, truncated BPTT or attention over the sequence may be needed")
    return "; ".join(parts)
