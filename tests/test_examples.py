"""The README's main job, `pytest --gradhealth examples/`, stays green and shows every example probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_examples_suite_passes_with_the_report():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--gradhealth", "-p", "no:cacheprovider", "examples/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "5 passed, 1 xfailed" in out
    assert "gradhealth: 7 probes: 1 vanishing, 6 ok" in out
    for model in ("GRUClassifier", "TokenLSTM", "ResidualCellLoop", "ReferenceLSTM", "RNN"):
        assert model in out
