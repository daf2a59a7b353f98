"""The diagnosis where users meet it: the fixture, a failing assertion's record in `pytest --gradhealth -v` and its
JSON report, and `gradhealth diagnose` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_gradhealth import Diagnosis
from pytest_gradhealth.report.export import load_report

SUITE = """
import pytest
from pytest_gradhealth import reference

def test_default_lstm(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(8, 16), 80)

def test_diagnose_through_the_fixture(gradhealth):
    d = gradhealth.diagnose(reference.gru(8, 16), what_ifs=False)
    assert d.profile.seq_len == 30 and d.layers[0].kind == "GRU"
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_failing_assertion_carries_its_diagnosis_to_the_report_and_the_json(pytester, workers):
    pytester.makepyfile(SUITE)
    pytester.makeini("[pytest]\ngradhealth_seq_len = 30\n")
    result = pytester.runpytest(
        "--gradhealth", "-v", "--gradhealth-json=report.json", "-p", "no:cacheprovider", *workers
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*measured fix: forget-gate bias +*: horizon * -> *",
            "diagnosis of test_a_failing_assertion_carries_its_diagnosis_to_the_report_and_the_json.py::"
            "test_default_lstm [ReferenceLSTM]:",
            "  *core (LSTM layer 0), hidden 16",
            "    forget gate: mean *",
            "    gradient crossing each step: *% through the cell state, *% through the hidden state",
            "  measured remedies (applied to copies of the model, probed the same way):",
        ]
    )
    (record,) = [r for r in load_report(pytester.path / "report.json").records if r.verdict != "ok"]
    diagnosis = Diagnosis.from_dict(record.check["diagnosis"])
    assert diagnosis.layers[0].kind == "LSTM" and diagnosis.what_ifs[0].change == "forget-gate bias +1"
    assert 0 < diagnosis.layers[0].cell_share < 1


def test_without_v_the_report_shows_no_diagnosis(pytester):
    pytester.makepyfile(SUITE)
    pytester.makeini("[pytest]\ngradhealth_seq_len = 30\n")
    result = pytester.runpytest("--gradhealth", "-p", "no:cacheprovider")
    assert "diagnosis of" not in result.stdout.str()


def test_the_command_prints_and_writes_the_diagnosis(tmp_path):
    (tmp_path / "models.py").write_text("from pytest_gradhealth import reference\n\nlstm = reference.lstm(4, 8)\n")
    out = tmp_path / "diagnosis.json"
    command = [sys.executable, "-m", "pytest_gradhealth", "diagnose", "models:lstm", "--seq-len", "20", "40"]
    result = subprocess.run([*command, "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("memory timescales (steps)") == 2
    assert result.stdout.count("% through the cell state") == 2
    assert "forget-gate bias +2: horizon" in result.stdout
    diagnoses = [Diagnosis.from_dict(d) for d in json.loads(out.read_text())["diagnoses"]]
    assert [d.profile.seq_len for d in diagnoses] == [20, 40]
    assert diagnoses[0].profile.name == "ReferenceLSTM seq_len=20"


def test_the_command_refuses_a_folder_as_the_json_path_before_probing(tmp_path):
    (tmp_path / "models.py").write_text("raise SystemExit('imported')\n")
    command = [sys.executable, "-m", "pytest_gradhealth", "diagnose", "models:lstm", "--seq-len", "20"]
    result = subprocess.run([*command, "--json", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "--json" in result.stderr and "is a folder" in result.stderr


def test_the_timescale_histogram_has_one_outline_per_gated_layer_and_marks_seq_len(tmp_path):
    pytest.importorskip("matplotlib")
    from torch import nn

    from pytest_gradhealth import diagnose
    from pytest_gradhealth.report import plots
    from pytest_gradhealth.report.records import ProbeRecord

    d = diagnose(nn.LSTM(4, 8, num_layers=2), 40, what_ifs=False)
    figure = plots.timescale_figure(d)
    gids = {artist.get_gid() for artist in figure.axes[0].get_children()}
    assert {"timescales-0", "timescales-1", "seq-len"} <= gids
    (line,) = [a for a in figure.axes[0].get_lines() if a.get_gid() == "seq-len"]
    assert list(line.get_xdata()) == [40, 40]
    check = {"assertion": "assert_no_vanishing", "verdict": "vanishing", "thresholds": {}, "diagnosis": d.to_dict()}
    record = ProbeRecord("test_x.py::test_lstm", "LSTM", d.profile, "vanishing", check)
    files = plots.write_plots([record], [], tmp_path)
    assert [f.name for f in files if "timescales" in f.name] and all(f.exists() for f in files)
