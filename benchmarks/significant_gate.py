"""Calibration of the `significant` gate (issue 14): false alarms on neutral changes, power on a real regression.

    python benchmarks/significant_gate.py            # input 32, hidden 64: a few minutes on 2 cores
    python benchmarks/significant_gate.py --quick    # small sizes: shows that it runs

A neutral change shifts a model's initial random draws (as creating one more module first would) and changes
nothing else. Each model kind gets a pool of `--pool` draws, each probed as one seed of `seeds=8` probes (its own
init seed and input seed, warm-up and window as the gate's probes would be); a comparison takes two disjoint sets of
8 draws as baseline and new run and asks the real gate rules (`significant`, and `ratio:10x` on one draw each) for a
verdict. The regression: LSTMs with forget-gate bias 2 as the baseline, bias 1 as the new run. Prints a Markdown
table of alarm counts per `--comparisons` comparisons.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pytest_gradhealth import probe
from pytest_gradhealth.profile import GradientProfile
from pytest_gradhealth.report.gate import FailRule, parse_fail_rule

SEEDS = 8


def lstm_with_forget_bias(input_size: int, hidden_size: int, forget_bias: float | None) -> nn.LSTM:
    """An nn.LSTM drawn from the global generator; forget_bias as `reference.lstm` sets it."""
    core = nn.LSTM(input_size, hidden_size, batch_first=True)
    if forget_bias is not None:
        with torch.no_grad():
            core.bias_ih_l0[hidden_size : 2 * hidden_size].fill_(forget_bias)
            core.bias_hh_l0[hidden_size : 2 * hidden_size].zero_()
    return core


def kinds(input_size: int, hidden_size: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "rnn (tanh)": lambda: nn.RNN(input_size, hidden_size, batch_first=True),
        "lstm": lambda: lstm_with_forget_bias(input_size, hidden_size, None),
        "gru": lambda: nn.GRU(input_size, hidden_size, batch_first=True),
        "lstm forget bias 2": lambda: lstm_with_forget_bias(input_size, hidden_size, 2.0),
        "lstm forget bias 1": lambda: lstm_with_forget_bias(input_size, hidden_size, 1.0),
    }


def pool(factory: Callable[[], nn.Module], size: int, seq_len: int, warmup: int) -> list[GradientProfile]:
    """`size` draws: draw i is the model the factory builds under seed i, probed with input seed i."""
    return probe(factory, seq_len, warmup=warmup, seeds=size).seed_profiles  # type: ignore[return-value]


def pooled(draws: list[GradientProfile]) -> GradientProfile:
    """A seeds=N profile made of `draws`, as `probe(..., seeds=N)` pools them."""
    first = draws[0]
    return GradientProfile(
        norms=first.norms, sample_norms=first.sample_norms, seq_len=first.seq_len, warmup=first.warmup,
        seeds=len(draws), seed_profiles=draws,
    )  # fmt: skip


def alarms(old: list[GradientProfile], new: list[GradientProfile], comparisons: int, rng: np.random.Generator,
           rules: dict[str, FailRule]) -> dict[str, int]:  # fmt: skip
    """How many of `comparisons` random (baseline, new) pairs of SEEDS draws each rule fails; with `old is new` the
    two sets of a pair are disjoint."""
    counts = dict.fromkeys(rules, 0)
    for _ in range(comparisons):
        if old is new:
            picked = rng.choice(len(old), 2 * SEEDS, replace=False)
            a, b = [old[i] for i in picked[:SEEDS]], [new[i] for i in picked[SEEDS:]]
        else:
            a = [old[i] for i in rng.choice(len(old), SEEDS, replace=False)]
            b = [new[i] for i in rng.choice(len(new), SEEDS, replace=False)]
        for name, rule in rules.items():
            seeded = name == "significant"
            counts[name] += rule.broken_by(pooled(a) if seeded else a[0], pooled(b) if seeded else b[0])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--pool", type=int, default=64, help="init draws per model kind")
    parser.add_argument("--comparisons", type=int, default=1000)
    args = parser.parse_args()
    input_size, hidden_size, seq_len, warmup = (8, 16, 40, 40) if args.quick else (32, 64, 100, 200)
    rng = np.random.default_rng(0)
    rules = {"significant": parse_fail_rule("significant"), "ratio:10x": parse_fail_rule("ratio:10x")}
    pools = {name: pool(f, args.pool, seq_len, warmup) for name, f in kinds(input_size, hidden_size).items()}
    print(f"input {input_size}, hidden {hidden_size}, seq_len {seq_len}, warmup {warmup}, seeds {SEEDS}, "
          f"{args.pool} init draws per kind, {args.comparisons} comparisons per row\n")  # fmt: skip
    print("| change | exp(lyapunov) median (IQR of draws) | `significant` alarms | one-draw `ratio:10x` alarms |")
    print("| --- | --- | --- | --- |")
    rows = [(name, name, name) for name in pools if name != "lstm forget bias 1"]
    rows.append(("lstm forget bias 2 -> 1 (regression)", "lstm forget bias 2", "lstm forget bias 1"))
    for label, old, new in rows:
        factors = np.exp([p.lyapunov for p in pools[new]])
        q1, q2, q3 = np.percentile(factors, [25, 50, 75])
        counts = alarms(pools[old], pools[new], args.comparisons, rng, rules)
        neutral = "neutral: shifted init draws, " if old == new else ""
        print(f"| {neutral}{label} | {q2:.4f} ({q1:.4f}-{q3:.4f}) | {counts['significant']} / {args.comparisons} "
              f"| {counts['ratio:10x']} / {args.comparisons} |")  # fmt: skip


if __name__ == "__main__":
    main()
