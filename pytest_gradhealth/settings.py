"""The session's gradient-health defaults: parsed from ini keys, command-line options and markers.

Pure Python (no torch): the plugin validates settings at start-up and at collection without loading torch.
Precedence, highest first: explicit arguments, the `gradhealth` marker, `--gradhealth-*` options, `gradhealth_*`
ini keys, built-in defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_gradhealth.errors import InvalidArgumentError


def _integer(minimum: int | None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = int(value) if isinstance(value, str) else value
        if not isinstance(number, int) or isinstance(number, bool) or (minimum is not None and number < minimum):
            raise ValueError
        return number

    return parse


def _positive_float(value: Any) -> float:
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not (0 < number < math.inf):
        raise ValueError
    return float(number)


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is None or value == "":
            return None
        text = str(value).removeprefix("torch.")
        if text not in choices:
            raise ValueError
        return text

    return parse


def _device(value: Any) -> str | None:
    text = None if value is None or value == "" else str(value)
    if text is not None and not (text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
        raise ValueError
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _truth(value: Any) -> bool:
    """A bool, or its spelling in an ini file or on the command line: true/false, yes/no, on/off, 1/0."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    return _bool(value)


# setting -> (what it must be, parser)
SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "seq_len": ("an integer >= 2", _integer(2)),
    "min_ratio": ("a positive finite number", _positive_float),
    "max_ratio": ("a positive finite number", _positive_float),
    "batch_size": ("an integer >= 1", _integer(1)),
    "seed": ("an integer", _integer(None)),
    "device": ("'cpu', 'cuda' or 'cuda:N'", _device),
    "dtype": ("one of float16, bfloat16, float32, float64", _choice("float16", "bfloat16", "float32", "float64")),
    "warmup": ("an integer >= 0", _integer(0)),
    "seeds": ("an integer >= 1", _integer(1)),
    "explain": ("true or false", _truth),
}

# probe options a marker may set besides the settings
MARKER_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "input_size": ("an integer >= 1", _integer(1)),
    "vocab_size": ("an integer >= 1", _integer(1)),
    "batch_first": ("True or False", _bool),
    "mode": ("'eval' or 'train'", _choice("eval", "train")),
    "measure": ("'input', 'hidden' or 'cell'", _choice("input", "hidden", "cell")),
}

HELP = {
    "seq_len": "sequence length probed when a test does not give one (default 100)",
    "min_ratio": "assert_no_vanishing's bound on gradient(step 0) / gradient(last step) (default 1e-3)",
    "max_ratio": "assert_no_exploding's bound on any step's gradient over the last step's (default 1e3)",
    "batch_size": "batch size of the probe's random inputs (default 8)",
    "seed": "seed of the probe's inputs and projection (default 0)",
    "device": "device to probe on: cpu, cuda, cuda:N (default: the model's)",
    "dtype": "dtype to probe in, e.g. float64 (default: the model's)",
    "warmup": "steps run before the measured window, so probes read the stationary decay (default 0)",
    "seeds": "independent draws per probe (inputs; fresh models from a factory); metrics are medians (default 1)",
    "explain": "on a vanishing failure, diagnose the model and probe remedies on copies of it for a 'measured fix' "
    "line (6 more probes for an LSTM); false: the hint alone (default true)",
}


def parse_values(
    values: Mapping[str, Any], source: str, parsers: Mapping[str, tuple[str, Callable[[Any], Any]]] = SETTINGS
) -> dict[str, Any]:
    """Parse raw values; an unknown key or a bad value raises an error naming `source`, the key and the value."""
    parsed = {}
    for key, raw in values.items():
        if key not in parsers:
            raise InvalidArgumentError(f"{source}: unknown key {key!r}; known keys are {', '.join(parsers)}")
        expected, parse = parsers[key]
        try:
            parsed[key] = parse(raw)
        except (ValueError, TypeError):
            raise InvalidArgumentError(f"{source}: {key} must be {expected}, got {raw!r}") from None
    return parsed


@dataclass(frozen=True)
class Settings:
    """Defaults the `gradhealth` fixture applies to every probe and assertion; `options` are extra probe options."""

    seq_len: int = 100
    min_ratio: float = 1e-3
    max_ratio: float = 1e3
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    warmup: int = 0
    seeds: int | None = None
    explain: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_ratio >= self.max_ratio:
            raise InvalidArgumentError(f"min_ratio ({self.min_ratio:g}) must be below max_ratio ({self.max_ratio:g})")

    def merged(self, values: Mapping[str, Any], source: str) -> Settings:
        """These settings with raw `values` parsed over them; `source` names where they came from in errors."""
        return replace(self, **parse_values(values, source))

    def with_marker(self, values: Mapping[str, Any], source: str) -> Settings:
        """Settings and extra probe options from a `gradhealth` marker's keyword arguments."""
        parsed = parse_values(values, source, {**SETTINGS, **MARKER_OPTIONS})
        extra = {k: parsed.pop(k) for k in list(parsed) if k in MARKER_OPTIONS}
        return replace(self, **parsed, options={**self.options, **extra})

    def probe_options(self) -> dict[str, Any]:
        """Keyword options for `probe` and the assertions."""
        options = {"batch_size": self.batch_size, "seed": self.seed, **self.options}
        if self.device is not None:
            options["device"] = self.device
        if self.dtype is not None:
            options["dtype"] = self.dtype
        if self.warmup:
            options["warmup"] = self.warmup
        if self.seeds is not None:
            options["seeds"] = self.seeds
        return options
