"""The JSON report's schema, checked field by field before anything is built from a file.

A report or baseline comes from disk, where anything may stand in it: every problem is one `ReportFormatError` that
names the field (`probes[3].profile.batch_size: expected an integer >= 0, got 'eight'`). Fields this version does not
know are left alone (a newer version may add some).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from pytest_gradhealth.errors import ReportFormatError
from pytest_gradhealth.profile import SCHEMA_VERSION
from pytest_gradhealth.verdicts import VERDICTS

MAX_INT = 10**9  # sizes, lengths and steps above this are not ones a probe measured
FLOAT_WORDS = ("NaN", "Infinity", "-Infinity")  # how the report writes non-finite floats

Validator = Callable[[Any, str], None]


def _fail(where: str, expected: str, value: Any) -> None:
    shown = repr(value)
    raise ReportFormatError(f"{where}: expected {expected}, got {shown[:60]}{'...' if len(shown) > 60 else ''}")


def integer(low: int = -(2**63), high: int = 2**63 - 1, optional: bool = False) -> Validator:
    def check(value: Any, where: str) -> None:
        if value is None and optional:
            return
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            _fail(where, f"an integer from {low} to {high}" + (" or null" if optional else ""), value)

    return check


def text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        _fail(where, "a string", value)


def number(value: Any, where: str) -> None:
    """A float as the report writes it: a finite number, or one of the words NaN, Infinity, -Infinity."""
    if value in FLOAT_WORDS and isinstance(value, str):
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(where, "a number (or 'NaN', 'Infinity', '-Infinity')", value)


def finite(value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(where, "a finite number", value)


def array(item: Validator, length: int | None = None, min_length: int = 0) -> Validator:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            _fail(where, "a list", value)
        if (length is not None and len(value) != length) or len(value) < min_length:
            _fail(where, f"a list of {length if length is not None else f'at least {min_length}'} items", value)
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]")

    return check


def mapping(values: Validator, optional: bool = False) -> Validator:
    def check(value: Any, where: str) -> None:
        if value is None and optional:
            return
        if not isinstance(value, Mapping):
            _fail(where, "an object" + (" or null" if optional else ""), value)
        for k, v in value.items():  # a key with control characters is shown escaped: errors are one line
            values(v, f"{where}.{k}" if str(k).isprintable() else f"{where}[{str(k)!r}]")

    return check


def fields(spec: Mapping[str, Validator], required: tuple[str, ...], value: Any, where: str) -> None:
    """`value` is an object whose `required` fields are present and whose known fields pass `spec`."""
    wanted = f"an object with {', '.join(required)}" if required else "an object"
    if not isinstance(value, Mapping):
        _fail(where, wanted, value)
    missing = [k for k in required if k not in value]
    if missing:
        raise ReportFormatError(f"{where}: expected {wanted}; missing {', '.join(missing)}")
    for key, check in spec.items():
        if key in value:
            check(value[key], f"{where}.{key}" if where else key)


def _text_or_number(value: Any, where: str) -> None:
    if not isinstance(value, str):
        finite(value, where)


def _optional_text(value: Any, where: str) -> None:
    if value is not None:
        text(value, where)


PROFILE: dict[str, Validator] = {
    "name": text,
    "model": text,
    "seq_len": integer(2, MAX_INT),
    "batch_size": integer(0, MAX_INT),
    "seed": integer(optional=True),
    "dtype": text,
    "device": text,
    "measure": text,
    "mode": text,
    "inputs": text,
    "layer": integer(-MAX_INT, MAX_INT, optional=True),
    "input_size": integer(1, MAX_INT, optional=True),
    "hidden_size": integer(1, MAX_INT, optional=True),
    "versions": mapping(text, optional=True),
    "warmup": integer(0, MAX_INT, optional=True),
    "seeds": integer(1, MAX_INT, optional=True),
}


def profile(value: Any, where: str) -> None:
    """A `GradientProfile.to_dict()`: its fields, and steps, norms and sample norms of one length."""
    fields(PROFILE, ("schema", "seq_len", "steps", "norms", "sample_norms"), value, where)
    if value["schema"] != SCHEMA_VERSION:
        _fail(f"{where}.schema", f"{SCHEMA_VERSION} (the gradient profile schema this version reads)", value["schema"])
    seq_len = value["seq_len"]
    array(integer(0, seq_len - 1), min_length=1)(value["steps"], f"{where}.steps")
    steps = value["steps"]
    if any(a >= b for a, b in itertools.pairwise(steps)):
        _fail(f"{where}.steps", "increasing timesteps", steps)
    array(number, len(steps))(value["norms"], f"{where}.norms")
    array(array(number, len(steps)), min_length=1)(value["sample_norms"], f"{where}.sample_norms")
    if value.get("contributions") is not None:
        mapping(array(number))(value["contributions"], f"{where}.contributions")
    if value.get("subnormal_steps") is not None:
        array(integer(0, seq_len - 1))(value["subnormal_steps"], f"{where}.subnormal_steps")
    if value.get("seed_profiles") is not None:
        array(profile, min_length=1)(value["seed_profiles"], f"{where}.seed_profiles")
    if value.get("log10_sample_norms") is not None:
        rows = array(array(number, len(steps)), len(value["sample_norms"]))
        rows(value["log10_sample_norms"], f"{where}.log10_sample_norms")


CHECK: dict[str, Validator] = {
    "assertion": text,
    "verdict": lambda v, where: None if v in VERDICTS else _fail(where, f"one of {', '.join(VERDICTS)}", v),
    "thresholds": mapping(_text_or_number),
    "message": _optional_text,
}


def record(value: Any, where: str) -> None:
    """A probe of a report: its test, name, verdict, check and profile."""
    fields(
        {"test": text, "probe": text, "verdict": CHECK["verdict"]},
        ("test", "probe", "verdict", "profile"),
        value,
        where,
    )
    if value.get("check") is not None:
        # an assertion's check has its name and thresholds; a probe that raised (disconnected) records its verdict
        fields(CHECK, ("verdict",), value["check"], f"{where}.check")
    profile(value["profile"], f"{where}.profile")


SCOPE: dict[str, Validator] = {
    "full": lambda v, where: None if isinstance(v, bool) else _fail(where, "true or false", v),
    "ran": array(text),
    "collected": array(text),
    "files": array(text),
}

REPORT: dict[str, Validator] = {
    "created": text,
    "environment": mapping(lambda v, where: None, optional=True),
    "settings": mapping(_text_or_number, optional=True),
    "probes": array(record),
    "references": array(record),
    "scope": lambda v, where: fields(SCOPE, (), v, where),
}


def report(value: Any) -> None:
    """A whole report (the tool and schema are checked by the loader, which names them first)."""
    fields(REPORT, ("probes",), value, "")
