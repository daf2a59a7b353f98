"""Reference models measured the same way as a session's probes, so a report shows where each model stands.

This module probes (torch): the report pipeline imports it only when references are asked for; the renderers never.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_gradhealth import reference
from pytest_gradhealth.probing import ProbeOptions, measure_profile
from pytest_gradhealth.report.records import ProbeRecord, reference_key
from pytest_gradhealth.verdicts import judge

REFERENCES = (
    ("tanh RNN", lambda i, h, seed: reference.rnn(i, h, seed=seed)),
    ("LSTM", lambda i, h, seed: reference.lstm(i, h, seed=seed)),
    ("LSTM forget_bias=2", lambda i, h, seed: reference.lstm(i, h, forget_bias=2.0, seed=seed)),
)


def measure_references(records: Sequence[ProbeRecord], min_ratio: float, max_ratio: float) -> list[ProbeRecord]:
    """For every distinct `reference_key` among the records, the reference RNN and LSTMs of those sizes, probed with
    those options."""
    seen: dict[tuple, None] = {}
    for record in records:
        p = record.profile
        if p.input_size is None or p.hidden_size is None:
            continue  # a model without a recurrent module has no reference of the same size
        seen[reference_key(p)] = None
    result = []
    for input_size, hidden, seq_len, batch, seed, dtype, device, measure, mode in seen:
        options = ProbeOptions(
            seq_len=seq_len, batch_size=batch, seed=seed or 0, dtype=dtype, device=device, measure=measure, mode=mode
        )
        for label, build in REFERENCES:
            if measure == "cell" and not label.startswith("LSTM"):
                continue  # only an LSTM has a cell state
            profile = measure_profile(build(input_size, hidden, seed or 0), options)
            profile.name = label
            test = f"reference {input_size}->{hidden}"
            result.append(ProbeRecord(test, label, profile, judge(profile, min_ratio, max_ratio)))
    return result
