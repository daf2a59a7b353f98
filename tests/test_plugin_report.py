"""`pytest --gradhealth` and its options as a user's suite runs them: without xdist, with -n 0 and with -n 2."""

from __future__ import annotations

import json

import pytest

SUITE = """
from pytest_gradhealth import probe, reference

FORGET_BIAS = {forget_bias}


def test_two_probes():
    probe(reference.lstm(4, 8, forget_bias=FORGET_BIAS), 12, name="lstm")
    probe(reference.rnn(4, 8), 12, name="rnn")


def test_fails_before_its_probe():
    raise RuntimeError("broken before probing")
    probe(reference.rnn(4, 8), 12)


def test_assertion(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(4, 8, forget_bias=FORGET_BIAS), 12)
"""


@pytest.fixture(params=[[], ["-n", "0"], ["-n", "2"]], ids=["no-xdist", "n0", "n2"])
def run(request, pytester, monkeypatch):
    """Runs the suite with the parametrized xdist arguments in a wide terminal; writes the suite with the given
    forget bias."""
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, forget_bias: float = 3.0):
        pytester.makepyfile(test_suite=SUITE.format(forget_bias=forget_bias))
        return pytester.runpytest(*request.param, "-p", "no:cacheprovider", *args)

    return run


def rows(result) -> list[list[str]]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("gradhealth: "))
    table = []
    for line in lines[start + 3 :]:
        if not line.startswith("test_suite.py"):
            break
        table.append(line.split())
    return table


def test_table_has_a_row_per_probe_worst_first(run):
    result = run("--gradhealth")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*= gradient health =*", "gradhealth: 3 probes: 1 vanishing, 2 ok"])
    table = rows(result)
    assert [(r[0], r[1], r[2]) for r in table] == [
        ("test_suite.py::test_two_probes", "rnn", "12"),
        ("test_suite.py::test_assertion", "ReferenceLSTM", "12"),
        ("test_suite.py::test_two_probes", "lstm", "12"),
    ]
    assert [r[7] for r in table] == ["vanishing", "ok", "ok"]
    assert set(table[0][8]) <= set("▁▂▃▄▅▆▇█") and len(table[0][8]) == 12


def test_an_80_column_terminal_puts_test_ids_on_their_own_lines(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    pytester.makepyfile(test_suite=SUITE.format(forget_bias=3.0))
    result = pytester.runpytest("--gradhealth")
    result.stdout.fnmatch_lines(
        [
            "  probe * seq_len * ratio * verdict*",
            "test_suite.py::test_two_probes",
            "  rnn * 12 * vanishing*",
            "test_suite.py::test_assertion",
        ]
    )
    section = result.stdout.str().split("gradient health")[1]
    assert max(len(line) for line in section.splitlines()[:9]) <= 80


def test_json_report_holds_every_profile_in_full(run, pytester):
    run("--gradhealth-json=out/report.json").assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["tool"] == "pytest-gradhealth" and report["schema"] == 1
    assert {"python", "pytest", "torch", "numpy", "devices", "git_commit"} <= set(report["environment"])
    assert report["environment"]["devices"] == ["cpu"]
    probes = [(p["test"], p["probe"], p["verdict"]) for p in report["probes"]]
    assert probes == [
        ("test_suite.py::test_assertion", "ReferenceLSTM", "ok"),
        ("test_suite.py::test_two_probes", "lstm", "ok"),
        ("test_suite.py::test_two_probes", "rnn", "vanishing"),
    ]
    assert all(len(p["profile"]["norms"]) == 12 for p in report["probes"])
    assert report["probes"][0]["check"]["assertion"] == "assert_no_vanishing"


def test_baseline_save_compare_regress_fail_update(run, pytester):
    saved = run("--gradhealth-save=base.json", "--gradhealth-save-partial")  # the suite has a failing test
    saved.assert_outcomes(passed=2, failed=1)
    saved.stdout.fnmatch_lines(
        [
            "gradhealth: baseline saved to *base.json",
            "gradhealth: note: this baseline is partial (1 test(s) failed or errored): probes of 1 test(s) that failed"
            " or did not run are missing and will show as new later: test_suite.py::test_fails_before_its_probe",
        ]
    )
    compare = ("--gradhealth-compare=base.json", "--gradhealth-compare-fail=ratio:10x")
    same = run(*compare)
    same.stdout.fnmatch_lines(["gradhealth baseline *base.json: 3 ok"])
    assert same.ret == pytest.ExitCode.TESTS_FAILED  # from the failing test, not the gate
    assert "regressed" not in same.stdout.str()

    regressed = run(*compare, forget_bias=0.0)
    regressed.stdout.fnmatch_lines(
        [
            "gradhealth baseline *base.json: 1 ok, 2 regressed",
            "*test_suite.py::test_assertion [[]ReferenceLSTM[]]*regressed (ratio:10x)*",
            "gradhealth: 2 probe(s) regressed past ratio:10x: failing the session",
        ]
    )
    refused = run("--gradhealth-save=base.json", forget_bias=0.0)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*base.json exists and would be overwritten; add --gradhealth-overwrite*"])

    run("--gradhealth-save=base.json", "--gradhealth-overwrite", "--gradhealth-save-partial", forget_bias=0.0)
    run(*compare, forget_bias=0.0).stdout.fnmatch_lines(["gradhealth baseline *base.json: 3 ok"])


def test_gate_fails_an_otherwise_green_session_through_the_exit_status(pytester, monkeypatch):
    pytester.makepyfile(
        test_green="""
        import os
        from pytest_gradhealth import probe, reference

        def test_probe():
            probe(reference.lstm(4, 8, forget_bias=float(os.environ.get("FB", "3"))), 12, name="lstm")
        """
    )
    pytester.runpytest("--gradhealth-save=b.json").assert_outcomes(passed=1)
    monkeypatch.setenv("FB", "0")
    result = pytester.runpytest("--gradhealth-compare=b.json", "--gradhealth-compare-fail=half_life:20%")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["gradhealth: 1 probe(s) regressed past half_life:20%: failing the session"])


def test_missing_baseline_stops_with_a_clear_message_or_is_created_on_request(run, pytester):
    missing = run("--gradhealth-compare=none.json")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(
        ["*baseline *none.json does not exist; create it with --gradhealth-save=none.json, or add*"]
    )
    created = run("--gradhealth-compare=none.json", "--gradhealth-create-missing", "--gradhealth-save-partial")
    created.stdout.fnmatch_lines(["gradhealth: baseline did not exist, written from this run to *none.json"])
    assert (pytester.path / "none.json").exists()


def test_corrupt_baseline_names_the_file(run, pytester):
    (pytester.path / "bad.json").write_text('{"tool": "pytest-gradhealth", ')
    result = run("--gradhealth-compare=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.json: not valid JSON (Expecting property name*line 1, column 31)"])


def test_xdist_and_plain_runs_give_the_same_report(pytester):
    pytester.makepyfile(test_suite=SUITE.format(forget_bias=3.0))
    pytester.runpytest("-p", "no:cacheprovider", "--gradhealth-json=plain.json")
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--gradhealth-json=xdist.json")
    plain, xdist = (json.loads((pytester.path / f"{name}.json").read_text()) for name in ("plain", "xdist"))
    for report in (plain, xdist):
        report.pop("created")
    assert plain == xdist


def test_references_show_where_the_model_stands(pytester):
    pytester.makepyfile(
        test_ref="from pytest_gradhealth import probe, reference\ndef test_p():\n    probe(reference.gru(3, 5), 10)\n"
    )
    result = pytester.runpytest("--gradhealth", "--gradhealth-references")
    result.stdout.fnmatch_lines(
        [
            "reference models (same sizes, measured the same way):",
            "*3->5*10*tanh RNN*",
            "*3->5*10*LSTM *",
            "*3->5*10*LSTM forget_bias=2*",
        ]
    )


def test_nothing_is_added_without_report_options(pytester):
    pytester.makepyfile(test_suite=SUITE.format(forget_bias=3.0))
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert "gradient health" not in result.stdout.str()
    assert sorted(p.name for p in pytester.path.iterdir()) == ["test_suite.py"]


def test_quiet_and_verbose(pytester):
    pytester.makepyfile(test_suite=SUITE.format(forget_bias=3.0))
    quiet = pytester.runpytest("-q", "--gradhealth")  # the rows stay, compact
    quiet.stdout.fnmatch_lines(
        ["gradhealth: 3 probes: 1 vanishing, 2 ok", "*rnn*vanishing*", "*ReferenceLSTM*ok*", "*lstm*ok*"]
    )
    assert "half-life" not in quiet.stdout.str()
    very_quiet = pytester.runpytest("-qq", "--gradhealth")
    very_quiet.stdout.fnmatch_lines(["gradhealth: 3 probes: 1 vanishing, 2 ok", "*rnn*vanishing*"])
    section = very_quiet.stdout.str().split("gradhealth: 3 probes: 1 vanishing, 2 ok")[1]
    assert "vanishing" in section and " ok" not in section
    verbose = pytester.runpytest("-v", "--gradhealth")
    verbose.stdout.fnmatch_lines(["*test*probe*model*measure*dtype*batch*seq_len*ratio*"])


def test_a_disconnected_model_is_reported_as_disconnected_not_vanishing(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makepyfile(
        test_cut="""
        import pytest, torch
        from pytest_gradhealth import probe, DisconnectedGradientError

        class Cut(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = torch.nn.RNN(3, 4, batch_first=True)

            def forward(self, x):
                return self.rnn(x)[0] * 0.0

        def test_cut():
            with pytest.raises(DisconnectedGradientError):
                probe(Cut(), 6)
        """
    )
    result = pytester.runpytest("--gradhealth")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gradhealth: 1 probe: 1 disconnected", "test_cut.py::test_cut*Cut*nan*disconnected*"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--gradhealth-json=."], "*--gradhealth-json: * is a folder; give the path of a file*"),
        (["--gradhealth-save=afile/base.json"], "*--gradhealth-save: cannot write *afile/base.json: *afile is a file*"),
    ],
)
def test_an_output_path_that_cannot_be_written_stops_the_session_first(pytester, args, words):
    (pytester.path / "afile").write_text("")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([words])
