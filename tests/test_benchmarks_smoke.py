"""benchmarks/run.py at a tiny size, so that it cannot rot: it runs and prints every row (timings are not checked)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from pytest_gradhealth import probe

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
# Group 7 is groups 1 and 2 again on CUDA, or one line saying it was skipped. Groups 1 and 2 hold a floor row per size.
ROWS_PER_GROUP = {"1": 12, "2": 20, "3": 4, "4": 2, "5": 4, "6": 3, "7": 32 if torch.cuda.is_available() else 1, "8": 3}
# A ratio, the heavy modules the plugin imported, or why the CUDA rows did not run.
RESULT = re.compile(r"\d+\.\d{3}x|[a-z]+(, [a-z]+)*|skipped: torch\.cuda\.is_available\(\) is False")


def test_quick_run_prints_every_row_of_the_table():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"], capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if re.match(r"\| \d ", line)]
    assert Counter(cells[0].strip() for cells in rows) == ROWS_PER_GROUP
    for cells in rows:
        assert len(cells) == 7 and RESULT.fullmatch(cells[4].strip()), cells


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("gradhealth_benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_floor_rows_compute_what_the_probe_computes():
    """A floor row is a floor only if it does the probe's work: the default call's floor gives the probe's norms bit
    for bit, and the widened layer of the cell path's floor gives the layer's own output."""
    bench = _benchmark_module()
    sizes = bench.QUICK
    model = bench.build("nn.LSTM", sizes, 8)
    seq_len = sizes.small[1]
    expected = probe(model, seq_len, batch_size=sizes.batch).norms
    np.testing.assert_array_equal(bench.floor_call(model, sizes, seq_len), expected)
    x = bench.make_batch(sizes, seq_len)
    wide = bench.widened(model)
    zeros = x.new_zeros(*x.shape[:2], model.hidden_size)
    torch.testing.assert_close(wide(torch.cat([x, zeros], dim=-1))[0], model(x)[0], rtol=1e-6, atol=1e-7)
    assert bench.widened_pass(wide, x).shape == zeros.shape
