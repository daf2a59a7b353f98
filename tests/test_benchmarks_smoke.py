"""benchmarks/run.py at a tiny size, so that it cannot rot: it runs and prints every row (timings are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
# Group 7 is groups 1 and 2 again on CUDA, or one line saying it was skipped.
ROWS_PER_GROUP = {"1": 10, "2": 18, "3": 4, "4": 2, "5": 4, "6": 3, "7": 28 if torch.cuda.is_available() else 1, "8": 3}
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
