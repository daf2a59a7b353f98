"""The `gradhealth` command as a user runs it: `python -m pytest_gradhealth ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report.export import build_report, load_report, write_json
from pytest_gradhealth.report.records import ProbeRecord
from pytest_gradhealth.report.text import render_table

MODELS = """
import torch
from pytest_gradhealth import reference

NUMBER = 3
lstm = reference.lstm(3, 6, forget_bias=2.0)
identity = torch.nn.Identity()


def small_rnn():
    return reference.rnn(3, 6)


def broken():
    raise RuntimeError("no weights today")


def not_a_model():
    return 42


def exits():
    import sys

    sys.exit(0)
"""


def gradhealth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest_gradhealth", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a models module and a file that is JSON but not a report."""
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "foreign.json").write_text('{"a": 1}')
    (tmp_path / "script.py").write_text("import sys\nsys.exit(0)\n")
    return tmp_path


def report(path: Path, rates: dict[str, float]) -> Path:
    """A saved report with one probe per test, decaying by its rate per step."""
    records = []
    for test, rate in rates.items():
        norms = rate ** np.arange(11, -1, -1.0)
        profile = GradientProfile(norms=norms, sample_norms=norms[None], seq_len=12, name="lstm", model="LSTM")
        records.append(ProbeRecord(test, "lstm", profile, "ok"))
    write_json(path, build_report(records, [], {"min_ratio": 1e-3, "max_ratio": 1e3}, path.parent))
    return path


def test_the_console_script_is_installed():
    (script,) = metadata.entry_points(group="console_scripts", name="gradhealth")
    assert script.value == "pytest_gradhealth.cli:main"


@pytest.mark.parametrize("command", ["", "probe", "show", "compare", "plot"])
def test_help_describes_every_command_with_examples(project, command):
    result = gradhealth(*filter(None, [command]), "--help", cwd=project)
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: gradhealth {command}".rstrip())
    assert "examples:\n  gradhealth " in result.stdout
    flags = {
        "probe": ["--seq-len", "--references", "--json", "--plot", "--batch-size", "--seed", "--dtype", "--measure"],
        "compare": ["--fail", "ratio:10x", "half_life:20%", "horizon:5", "exit status"],
        "plot": ["--out", "--format", 'pip install "pytest-gradhealth[plot]"'],
    }
    assert all(flag in result.stdout for flag in flags.get(command, []))


def test_probe_prints_the_plugins_table_and_show_prints_it_again_from_json(project):
    probed = gradhealth(
        "probe", "models:small_rnn", "models.py:lstm", "--seq-len", "10", "20", "--json", "r.json", cwd=project
    )
    assert probed.returncode == 1, probed.stderr  # the tanh RNN fails the default thresholds
    saved = load_report(project / "r.json")
    table = render_table(saved.records, width=120)
    assert probed.stdout.splitlines() == [
        *table,
        "gradhealth: report written to r.json",
        "gradhealth: 1 probe(s) failed the thresholds (min_ratio 0.001, max_ratio 1000): vanishing",
    ]
    assert [(r.test, r.probe, r.verdict) for r in saved.records] == [
        ("models.py:lstm", "ReferenceLSTM seq_len=10", "ok"),
        ("models.py:lstm", "ReferenceLSTM seq_len=20", "ok"),
        ("models:small_rnn", "ReferenceRNN seq_len=10", "ok"),
        ("models:small_rnn", "ReferenceRNN seq_len=20", "vanishing"),
    ]
    shown = gradhealth("show", "r.json", cwd=project)
    assert shown.returncode == 0 and shown.stdout.splitlines() == table


def test_probe_with_references_and_a_plot(project):
    pytest.importorskip("matplotlib", reason='--plot needs matplotlib: pip install "pytest-gradhealth[plot]"')
    result = gradhealth("probe", "models:lstm", "--seq-len", "12", "--references", "--plot", "lstm.svg", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("reference models (same sizes, measured the same way):")
    references = lines[start + 3 : start + 6]
    assert all(line.startswith("3->6 ") for line in references)
    assert ["tanh RNN" in references[0], "LSTM " in references[1], "LSTM forget_bias=2" in references[2]] == [True] * 3
    assert lines[-1] == "gradhealth: plot written to lstm.svg"
    ids = {element.get("id") for element in ET.parse(project / "lstm.svg").getroot().iter()}
    assert {"profile-0", "band-0", "reference-0-0", "reference-0-1", "reference-0-2"} <= ids


def test_compare_gates_through_the_exit_status(project):
    report(project / "base.json", {"t::a": 0.9, "t::b": 0.9})
    report(project / "same.json", {"t::a": 0.9, "t::b": 0.9})
    report(project / "worse.json", {"t::a": 0.9, "t::b": 0.5})

    same = gradhealth("compare", "base.json", "same.json", "--fail", "ratio:10x", cwd=project)
    assert same.returncode == 0
    assert same.stdout.splitlines()[0] == "gradhealth baseline base.json: 2 ok"

    worse = gradhealth("compare", "base.json", "worse.json", "--fail", "ratio:10x", "--fail", "horizon:50", cwd=project)
    assert worse.returncode == 1
    assert "t::b [lstm]" in worse.stdout and "regressed (ratio:10x)" in worse.stdout
    assert worse.stdout.splitlines()[-1] == "gradhealth: 1 probe(s) regressed past ratio:10x"


def test_compare_significant_refuses_single_draws_like_the_plugin(project):
    report(project / "base.json", {"t::a": 0.9})
    report(project / "worse.json", {"t::a": 0.1})
    refused = gradhealth("compare", "base.json", "worse.json", "--fail", "significant", cwd=project)
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        "gradhealth: error: fail rule significant: base.json: 1 probe(s) it cannot judge, so they would pass whatever "
        "changed (t::a [lstm]: measured with 1 draw(s); significant needs seeds of at least 7 on both sides); measure "
        "the baseline and this run with --seeds=8" in refused.stderr
    )


def test_plot_writes_a_figure_per_probe_and_an_overview(project):
    pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "pytest-gradhealth[plot]"')
    report(project / "r.json", {"t::a": 0.9, "t::b": 0.5})
    result = gradhealth("plot", "r.json", "--out", "plots", "--format", "svg", cwd=project)
    assert result.returncode == 0, result.stderr
    written = result.stdout.splitlines()
    assert len(written) == 3 and written[-1] == str(Path("plots", "overview.svg"))
    assert sorted(p.name for p in (project / "plots").iterdir()) == sorted(Path(w).name for w in written)


def test_plot_without_matplotlib_names_the_extra(project):
    report(project / "r.json", {"t::a": 0.9})
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pytest_gradhealth.cli import main; "
        "sys.exit(main(['plot', 'r.json', '--out', 'plots']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        'gradhealth: error: plots need matplotlib, which is not installed: pip install "pytest-gradhealth[plot]"\n'
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND (see: gradhealth --help)"),
        (["probe", "nosuch:build", "--seq-len", "10"], "no module named 'nosuch': give a module importable from"),
        (["probe", "missing/models.py:lstm", "--seq-len", "10"], "missing/models.py: no such file"),
        (["probe", "models", "--seq-len", "10"], "'models': expected MODULE:FACTORY, such as models:build_lstm"),
        (["probe", "models:NUMBER", "--seq-len", "10"], "models:NUMBER: NUMBER is a value of type int, not a factory"),
        (
            ["probe", "models:broken", "--seq-len", "10"],
            "models:broken: calling broken() raised RuntimeError: no weights",
        ),
        (
            ["probe", "models:not_a_model", "--seq-len", "10"],
            "not_a_model() returned a value of type int, not a torch.nn",
        ),
        (["probe", "models:identity", "--seq-len", "10"], "cannot infer input_size for Identity"),
        (["probe", "models:lstm", "--seq-len", "1"], "argument --seq-len: must be an integer >= 2, got '1'"),
        (["probe", "models:lstm", "--seq-len", "9", "--plot", "out.pdf"], "out.pdf: a plot's file name must end in"),
        (["probe", "models:lstm", "--seq-len", "9", "--min-ratio", "2", "--max-ratio", "1"], "min_ratio (2) must be"),
        (["show", "foreign.json"], "foreign.json: a JSON file, but not a pytest-gradhealth report"),
        (
            ["compare", "a.json", "b.json", "--fail", "ratio:20%"],
            "--fail: 'ratio:20%': ratios span orders of magnitude",
        ),
        (["plot", "foreign.json", "--out", "p", "--format", "pdf"], "argument --format: invalid choice: 'pdf'"),
        (["probe", "script.py:lstm", "--seq-len", "10"], "importing script.py called sys.exit(0): a module to probe"),
        (["probe", "models:exits", "--seq-len", "10"], "models:exits: calling exits() called sys.exit(0)"),
        (["probe", "models:lstm", "--seq-len", "10", "--json", "."], "--json: . is a folder; give the path of a file"),
        (["probe", "models:lstm", "--seq-len", "10", "--compare-fail", "ratio:10x"], "--compare-fail needs --compare"),
        (["compare", "foreign.json", "foreign.json"], "foreign.json: a JSON file, but not a pytest-gradhealth report"),
        (["compare", "a.json", "b.json", "--fail", "ratio:1e400x"], "a factor must be > 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(project, args, message):
    result = gradhealth(*args, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("gradhealth: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_probe_exits_0_when_every_probe_passes_the_thresholds_and_gates_like_the_plugin(project):
    passed = gradhealth("probe", "models:lstm", "--seq-len", "10", "--save", "base.json", cwd=project)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines()[-1] == "gradhealth: baseline saved to base.json"
    gated = gradhealth(
        "probe",
        "models:lstm",
        "--seq-len",
        "10",
        "--seed",
        "3",
        "--compare",
        "base.json",
        "--markdown",
        "s.md",
        cwd=project,
    )
    assert gated.returncode == 1
    assert "mismatch (seed 0 -> 3: re-save the baseline)" in gated.stdout
    assert (project / "s.md").read_text().startswith("## Gradient health\n")


def test_help_documents_the_exit_statuses(project):
    for command in ("probe", "compare"):
        text = " ".join(gradhealth(command, "--help", cwd=project).stdout.split())
        assert "Exit status: 0 success; 1 a probe failed the thresholds (probe) or the gate failed" in text
        assert "2 bad arguments or input" in text


def test_probe_warmup_flag_reaches_the_saved_profiles(project):
    probed = gradhealth(
        "probe", "models:small_rnn", "--seq-len", "10", "--warmup", "25", "--json", "r.json", cwd=project
    )
    assert probed.returncode == 1, probed.stderr
    assert [r.profile.warmup for r in load_report(project / "r.json").records] == [25]
    refused = gradhealth("probe", "models:small_rnn", "--seq-len", "10", "--warmup", "-3", cwd=project)
    assert refused.returncode == 2 and "--warmup: must be an integer >= 0, got '-3'" in refused.stderr
