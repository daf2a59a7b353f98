"""The CI gate as a user's suite meets it (pytester): the baseline is read once and never lost, settings must match,
removed probes fail, corrupt baselines stop the session first, and the outputs CI systems read."""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SUITE = """
import os
import pytest
from pytest_gradhealth import reference

FORGET_BIAS = float(os.environ.get("FB", "3"))


def test_lstm(gradhealth):
    gradhealth.probe(reference.lstm(3, 6, forget_bias=FORGET_BIAS), name="lstm")


def test_rnn(gradhealth):
    gradhealth.probe(reference.rnn(3, 6), name="rnn")
"""
GATE = ("--gradhealth-compare=base.json", "--gradhealth-compare-fail=ratio:10x")


@pytest.fixture(params=[[], ["-n", "2"]], ids=["no-xdist", "n2"])
def xdist(request) -> list[str]:
    return request.param


@pytest.fixture
def suite(pytester, monkeypatch):
    """A two-probe suite at seq_len 12 in a wide terminal; FB (the LSTM's forget bias) 0 makes a regression."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FB", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\ngradhealth_seq_len = 12\n")
    return pytester


def run(pytester, *args: str, fb: float | None = None):
    """pytest in-process; `fb` the LSTM's forget bias (a regression at 0)."""
    if fb is not None:
        os.environ["FB"] = str(fb)
    try:
        return pytester.runpytest("-p", "no:cacheprovider", *args)
    finally:
        os.environ.pop("FB", None)


def saved(pytester, name: str = "base.json") -> bytes:
    result = run(pytester, f"--gradhealth-save={name}")
    assert result.ret == 0, result.stdout.str()
    return (pytester.path / name).read_bytes()


# -- 1. the baseline is read once, and never replaced by this run's outputs or by a failing gate ----------------


@pytest.mark.parametrize("json_path", ["base.json", "./sub/../base.json", "link.json"])
def test_a_json_report_onto_the_baseline_is_refused_before_any_test_runs(suite, json_path):
    before = saved(suite)
    (suite.path / "sub").mkdir()
    (suite.path / "link.json").symlink_to(suite.path / "base.json")
    result = run(suite, f"--gradhealth-json={json_path}", *GATE, fb=0.0)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gradhealth-json: *is the baseline of --gradhealth-compare*--gradhealth-save=*"])
    assert "passed" not in result.stdout.str()
    assert (suite.path / "base.json").read_bytes() == before


def test_a_failing_gate_never_rewrites_the_baseline_it_failed_against(suite, xdist):
    before = saved(suite)
    args = ("--gradhealth-save=base.json", "--gradhealth-overwrite", *GATE)
    result = run(suite, *xdist, *args, fb=0.0)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gradhealth: 1 probe(s) regressed past ratio:10x: failing the session",
            "gradhealth: baseline not saved to *base.json: the gate failed against it*",
        ]
    )
    assert (suite.path / "base.json").read_bytes() == before
    assert run(suite, *GATE, fb=0.0).ret == pytest.ExitCode.TESTS_FAILED  # the next run still fails


def test_a_passing_gate_updates_the_baseline_it_compared_with(suite):
    saved(suite)
    result = run(suite, "--gradhealth-save=base.json", "--gradhealth-overwrite", *GATE)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 2 ok", "gradhealth: baseline saved to *base.json"])


def test_the_baseline_is_read_when_the_session_starts_not_when_it_ends(suite):
    saved(suite)
    suite.makepyfile(
        test_zz_clobber="""
        from pathlib import Path

        def test_clobber():
            Path("base.json").write_text("not json any more")
        """
    )
    result = run(suite, *GATE, fb=0.0)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 1 ok, 1 regressed"])


def test_a_save_through_a_symbolic_link_writes_its_target_and_keeps_the_link(suite):
    before = saved(suite, "v1.json")
    (suite.path / "current.json").symlink_to("v1.json")
    result = run(suite, "--gradhealth-save=current.json", "--gradhealth-overwrite", fb=1.0)
    assert result.ret == pytest.ExitCode.OK
    assert (suite.path / "current.json").is_symlink()
    assert (suite.path / "v1.json").read_bytes() != before


@pytest.mark.parametrize(
    "args", [["--gradhealth-save=base.json"], ["--gradhealth-compare=base.json", "--gradhealth-create-missing"]]
)
def test_a_baseline_never_replaces_a_file_created_while_the_run_went_on(suite, args):
    suite.makepyfile(test_zz_meanwhile='def test_meanwhile():\n    open("base.json", "w").write("another run")\n')
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["gradhealth: could not write *base.json: it exists now, created while this run went on*: failing the session"]
    )
    assert (suite.path / "base.json").read_text() == "another run"
    assert [p.name for p in suite.path.iterdir() if p.name.startswith(".base.json")] == []


# -- 2. interrupted, failing, collect-only and empty sessions never write a baseline ----------------------------

INTERRUPTED = """
from pytest_gradhealth import reference


def test_a(gradhealth):
    gradhealth.probe(reference.rnn(3, 6), name="a")


def test_b():
    raise KeyboardInterrupt


def test_c(gradhealth):
    gradhealth.probe(reference.rnn(3, 6), name="c")
"""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--collect-only"], "--collect-only runs no test"),
        (["-k", "nothing_matches"], "no probe was measured: a baseline with no probes is never written"),
        (["-x"], "1 test(s) failed or errored: a baseline is saved only from a passing run; add *save-partial*"),
    ],
)
def test_a_session_that_did_not_pass_or_measured_nothing_keeps_the_old_baseline(suite, args, words):
    before = saved(suite)
    suite.makepyfile(test_broken="def test_broken():\n    assert False\n")
    result = run(suite, "--gradhealth-save=base.json", "--gradhealth-overwrite", *args)
    result.stdout.fnmatch_lines([f"gradhealth: baseline not saved to *base.json: {words}*"])
    assert (suite.path / "base.json").read_bytes() == before


def test_ctrl_c_during_a_save_keeps_the_old_baseline(suite):
    before = saved(suite)
    suite.makepyfile(test_suite=INTERRUPTED)
    args = ("--gradhealth-save=base.json", "--gradhealth-overwrite", "--gradhealth-save-partial")
    result = suite.runpytest_subprocess(*args)  # in-process, pytester would raise the KeyboardInterrupt here
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*baseline not saved to *base.json: the session was interrupted (KeyboardInterrupt)*"])
    assert (suite.path / "base.json").read_bytes() == before


def test_an_internal_error_never_saves_even_with_save_partial(suite):
    before = saved(suite)
    suite.makeconftest(
        """
        def pytest_runtest_logfinish(nodeid, location):
            if nodeid.endswith("test_rnn"):
                raise RuntimeError("a plugin broke")
        """
    )
    result = run(suite, "--gradhealth-save=base.json", "--gradhealth-overwrite", "--gradhealth-save-partial")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["*baseline not saved to *base.json: the session was stopped with exit status 3*"])
    assert (suite.path / "base.json").read_bytes() == before


def test_save_partial_saves_what_a_failing_session_measured_and_names_what_is_missing(suite, xdist):
    suite.makepyfile(test_broken="def test_broken():\n    assert False\n")
    result = run(suite, *xdist, "--gradhealth-save=base.json", "--gradhealth-save-partial")
    result.stdout.fnmatch_lines(
        ["gradhealth: note: this baseline is partial (1 test(s) failed or errored): *: test_broken.py::test_broken"]
    )
    probes = json.loads((suite.path / "base.json").read_text())["probes"]
    assert [p["probe"] for p in probes] == ["lstm", "rnn"]


@pytest.mark.parametrize("output", ["--gradhealth-json=out", "--gradhealth-markdown=out"])
def test_no_baseline_is_saved_from_a_run_that_could_not_write_its_other_outputs(suite, output):
    suite.makepyfile(test_zz_block='import os\n\n\ndef test_block():\n    os.mkdir("out")\n')  # out: a folder now
    result = run(suite, output, "--gradhealth-save=base.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gradhealth: could not write *out: *: failing the session",
            "gradhealth: baseline not saved to *base.json: *out could not be written: a baseline is saved only from a "
            "passing run; add --gradhealth-save-partial*",
        ]
    )
    assert not (suite.path / "base.json").exists()


@pytest.mark.parametrize("args", [["-k", "lstm"], ["test_suite.py::test_lstm"]])
def test_a_partial_run_never_replaces_a_baseline_holding_probes_it_did_not_run(suite, xdist, args):
    before = saved(suite)
    save = ("--gradhealth-save=base.json", "--gradhealth-overwrite")
    result = run(suite, *xdist, *args, *save)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gradhealth: baseline not saved to *base.json: it holds probes of 1 test(s) this run did not run: "
            "test_suite.py::test_rnn; saving would drop them: *add --gradhealth-save-partial*: failing the session"
        ]
    )
    assert (suite.path / "base.json").read_bytes() == before
    result = run(suite, *xdist, *args, *save, "--gradhealth-save-partial")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["gradhealth: note: this baseline is partial (*): *: test_suite.py::test_rnn"])
    assert [p["probe"] for p in json.loads((suite.path / "base.json").read_text())["probes"]] == ["lstm"]


# -- 3. probes compare only when measured the same way ----------------------------------------------------------


def test_a_probe_measured_with_other_settings_is_a_named_mismatch_that_fails(suite, xdist):
    saved(suite)
    result = run(suite, *xdist, "--gradhealth-seq-len=8", *GATE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gradhealth baseline *base.json: 2 mismatch",
            "*test_suite.py::test_lstm [[]lstm[]]*mismatch (seq_len 12 -> 8: re-save the baseline)*",
            "gradhealth: 2 probe(s) measured with other settings than the baseline (seq_len 12 -> 8): re-save the "
            "baseline: failing the session",
        ]
    )


def test_a_seeded_baseline_compared_with_single_draws_is_a_mismatch_naming_the_seeds(suite):
    # two draws of a batch of 4 pool 8 samples: the batch size of a single draw, so only the seeds tell them apart
    assert run(suite, "--gradhealth-seeds=2", "--gradhealth-batch-size=4", "--gradhealth-save=base.json").ret == 0
    result = run(suite, *GATE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_lstm [[]lstm[]]*mismatch (seeds 2 -> none: re-save the baseline)*"])


# -- 4. a probe a full run no longer produces is removed; one of a test that did not run is not ------------------


def test_a_renamed_test_fails_a_full_run_as_removed(suite, xdist):
    saved(suite)
    suite.makepyfile(test_suite=SUITE.replace("def test_rnn", "def test_renamed_rnn"))
    result = suite.runpytest(*xdist, *GATE)  # with the cache provider's options (--lf, --lfnf) present
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "gradhealth baseline *base.json: 1 new, 1 ok, 1 removed",
            "*test_suite.py::test_rnn [[]rnn[]]*removed*",
            "gradhealth: 1 baseline probe(s) no longer measured by the tests that held them (removed: *): re-save*",
        ]
    )


@pytest.mark.parametrize(
    "args", [["-k", "lstm"], ["test_suite.py::test_lstm"], ["--deselect", "test_suite.py::test_rnn"]]
)
def test_probes_of_deselected_tests_are_not_run_and_pass(suite, args):
    saved(suite)
    result = run(suite, *args, *GATE)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 1 not run, 1 ok", "*test_rnn [[]rnn[]]*not run*"])


def test_probes_of_skipped_tests_are_not_run_and_pass(suite, xdist):
    saved(suite)
    suite.makepyfile(test_suite=SUITE.replace("def test_rnn", "@pytest.mark.skip\ndef test_rnn"))
    result = run(suite, *xdist, *GATE)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 1 not run, 1 ok"])


def test_a_gate_that_fails_when_no_test_was_collected_exits_1_not_5(suite, xdist):
    saved(suite)
    (suite.path / "test_suite.py").rename(suite.path / "check_suite.py")  # pytest no longer collects it
    result = run(suite, *xdist, *GATE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 2 removed"])


# -- 5. a corrupt or foreign baseline is a one-line usage error before any test runs -------------------------------


def mutate(data: dict, where: list, value) -> dict:
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return data


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        (["probes", 0, "profile", "batch_size"], "eight", "probes[0].profile.batch_size: expected an integer"),
        (["probes", 0, "profile", "versions"], [1, 2], "probes[0].profile.versions: expected an object"),
        (["probes", 0, "profile", "seq_len"], 10**30, "probes[0].profile.seq_len: expected an integer from 2"),
        (["probes", 0, "profile", "seq_len"], -3, "probes[0].profile.seq_len: expected an integer from 2"),
        (["probes", 0, "profile", "norms"], [], "probes[0].profile.norms: expected a list of 12 items"),
        (["probes", 0, "profile", "sample_norms"], [[1.0]], "probes[0].profile.sample_norms[0]: expected a list of"),
        (["probes", 0, "profile", "steps"], [], "probes[0].profile.steps: expected a list of at least 1"),
        (["probes", 0, "check"], {"assertion": 3}, "probes[0].check: expected an object with verdict; missing verdict"),
        (["probes", 0, "test"], [[[[[]]]]], "probes[0].test: expected a string"),
    ],
)
def test_a_corrupt_baseline_field_stops_the_session_first_naming_file_and_field(suite, where, value, field):
    saved(suite)
    path = suite.path / "base.json"
    path.write_text(json.dumps(mutate(json.loads(path.read_text()), where, value)))
    result = run(suite, *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1 and f"base.json: {field}" in errors[0], errors
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_nan_tokens_and_deep_nesting_are_usage_errors(suite):
    saved(suite)
    path = suite.path / "base.json"
    path.write_text(path.read_text().replace('"seq_len": 12', '"seq_len": NaN', 1))
    run(suite, *GATE).stderr.fnmatch_lines(["*base.json: not valid JSON: NaN is not JSON*"])
    path.write_text('{"tool": "pytest-gradhealth", "schema": 1, "probes": ' + "[" * 100000 + "]" * 100000 + "}")
    result = run(suite, *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*base.json: *nested too deeply*"])


# -- 6. fail rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["ratio:1e400x", "ratio:-10x", "ratio:nanx", "horizon:0", "ratio:0x"])
def test_fail_rules_out_of_range_are_refused_with_the_accepted_form(suite, rule):
    saved(suite)
    result = run(suite, "--gradhealth-compare=base.json", f"--gradhealth-compare-fail={rule}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--gradhealth-compare-fail: *{rule}*ratio:10x (ratio fell by more than a factor*"])


def test_significant_refuses_a_baseline_of_single_draws_before_any_test_runs(suite):
    saved(suite)
    result = run(suite, "--gradhealth-compare=base.json", "--gradhealth-compare-fail=significant", fb=0.0)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*fail rule significant: *base.json: 2 probe(s) it cannot judge, so they would pass whatever changed "
            "(test_suite.py::test_lstm [[]lstm[]]: measured with 1 draw(s); significant needs seeds of at least 7 on "
            "both sides); measure the baseline and this run with --gradhealth-seeds=8*"
        ]
    )
    assert "passed" not in result.stdout.str()


# -- 7. permissions --------------------------------------------------------------------------------------------


def test_written_files_get_the_umasks_mode_and_an_overwritten_file_keeps_its_own(suite):
    old = os.umask(0o022)
    try:
        saved(suite)
        run(suite, "--gradhealth-json=r.json")
        (suite.path / "base.json").chmod(0o600)
        run(suite, "--gradhealth-save=base.json", "--gradhealth-overwrite")
    finally:
        os.umask(old)
    assert stat.S_IMODE((suite.path / "r.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((suite.path / "base.json").stat().st_mode) == 0o600


# -- 8. control characters ------------------------------------------------------------------------------------


def test_control_characters_in_ids_from_a_baseline_are_escaped(suite):
    saved(suite)
    path = suite.path / "base.json"
    data = json.loads(path.read_text())
    data["probes"][0]["test"] = "evil\x1b[2J\x00::test"
    data["probes"][1]["profile"]["dtype"] = "float32\x1b]0;owned\x07"
    path.write_text(json.dumps(data))
    out = run(suite, *GATE).stdout.str()
    assert "\x1b" not in out and "\x00" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\x00::test" in out
    assert "mismatch (dtype float32\\x1b]0;owned\\x07 -> float32: re-save the baseline)" in out


# -- 10-12. Markdown, JUnit XML, -q and narrow terminals --------------------------------------------------------


def test_markdown_summary_puts_failures_and_changes_first(suite):
    saved(suite)
    result = run(suite, *GATE, "--gradhealth-markdown=summary.md", fb=0.0)
    result.stdout.fnmatch_lines(["gradhealth: Markdown summary written to *summary.md"])
    text = (suite.path / "summary.md").read_text()
    assert text.startswith("## Gradient health\n")
    assert "the gate **fails**" in text and "- :x: 1 probe(s) regressed past ratio:10x" in text
    changes, probes = text.index("### Changes"), text.index("### Probes")
    assert changes < probes
    row = next(line for line in text[changes:probes].splitlines() if "test_lstm" in line)
    assert "regressed (ratio:10x)" in row and " -> " in row


def test_each_probe_is_a_junit_xml_property_also_under_xdist(suite, xdist):
    result = run(suite, *xdist, "--junitxml=junit.xml", "--gradhealth-json=r.json")
    assert result.ret == pytest.ExitCode.OK
    root = ET.parse(suite.path / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == "test_lstm")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["gradhealth.lstm.verdict"] == "ok" and properties["gradhealth.lstm.seq_len"] == "12"
    assert float(properties["gradhealth.lstm.ratio"]) > 0 and "gradhealth" not in properties  # no raw record
    assert len(json.loads((suite.path / "r.json").read_text())["probes"]) == 2  # the record still travelled


def test_quiet_keeps_the_rows_in_compact_form(suite):
    result = run(suite, "-q", "--gradhealth")
    result.stdout.fnmatch_lines(
        ["gradhealth: 2 probes: *", "test *probe *seq_len *ratio *horizon *verdict", "test_suite.py::test_*"]
    )
    assert "half-life" not in result.stdout.str()


def test_a_narrow_terminal_says_which_columns_it_left_out(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = run(suite, "--gradhealth")
    result.stdout.fnmatch_lines(["(left out to fit 80 columns: *profile; -v shows every column)"])


def test_the_cli_compare_follows_the_plugins_rules_and_writes_markdown(suite):
    import subprocess
    import sys

    saved(suite)
    run(suite, "--gradhealth-seq-len=8", "--gradhealth-json=new.json")
    command = [sys.executable, "-m", "pytest_gradhealth", "compare", "base.json", "new.json", "--markdown", "s.md"]
    result = subprocess.run(command, cwd=suite.path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "mismatch (seq_len 12 -> 8: re-save the baseline)" in result.stdout
    assert "the gate **fails**" in Path(suite.path, "s.md").read_text()


def test_tests_a_conftest_deselects_are_not_run_with_or_without_xdist(suite, xdist):
    """A conftest that drops tests and says so (pytest_deselected): under xdist the workers deselect, and the
    controller hears it from them, or it would read the dropped test's probes as removed."""
    saved(suite)
    suite.makeconftest(
        """
def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if item.name == "test_rnn"]
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if item not in dropped]
"""
    )
    result = run(suite, *xdist, *GATE)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 1 not run, 1 ok"])


def test_create_missing_and_save_to_the_same_missing_file_write_it_once(suite):
    result = run(suite, *GATE, "--gradhealth-create-missing", "--gradhealth-save=base.json")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["gradhealth: baseline did not exist, written from this run to *base.json"])
    assert "could not write" not in result.stdout.str()


def test_a_baseline_holding_a_disconnected_probe_reads_back(suite, xdist):
    """A test that expects DisconnectedGradientError records the probe with its verdict only (no assertion)."""
    suite.makepyfile(
        test_detached="""
import pytest
from torch import nn
from pytest_gradhealth.errors import DisconnectedGradientError


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 6, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0].detach() + 0 * self.rnn.weight_hh_l0.sum()


def test_detached(gradhealth):
    with pytest.raises(DisconnectedGradientError):
        gradhealth.probe(Detached(), name="detached")
"""
    )
    saved(suite)
    result = run(suite, *xdist, *GATE)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["gradhealth baseline *base.json: 3 ok"])
