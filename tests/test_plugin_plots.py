"""`pytest --gradhealth-plots=DIR` as a user's suite runs it, without xdist and with -n 2.

Each run is a subprocess: matplotlib first imported inside an in-process pytester run is taken out of sys.modules
after it, and a later import then mixes two copies of its classes ("Invalid arguments to set_clip_path")."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pytest_gradhealth.report.plots import plot_filename

SUITE = """
from pytest_gradhealth import probe, reference


def test_two_probes():
    probe(reference.lstm(4, 8, forget_bias=3.0), 12, name="lstm")
    probe(reference.rnn(4, 8), 12, name="rnn")


def test_assertion(gradhealth):
    gradhealth.assert_no_vanishing(reference.lstm(4, 8, forget_bias=3.0), 12)
"""
BLOCK_MATPLOTLIB = """
import sys

for name in [m for m in list(sys.modules) if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
    sys.modules[name] = None  # import matplotlib now fails, as where it is not installed
"""


def expected_files(fmt: str) -> list[str]:
    probes = [("test_two_probes", "lstm"), ("test_two_probes", "rnn"), ("test_assertion", "ReferenceLSTM")]
    return sorted([f"overview.{fmt}", *(plot_filename(f"test_suite.py::{t}", p, fmt) for t, p in probes)])


@pytest.fixture(params=[[], ["-n", "2"]], ids=["no-xdist", "n2"])
def xdist(request) -> list[str]:
    return request.param


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_plots_are_written_once_a_probe_and_an_overview(suite, xdist):
    result = suite.runpytest_subprocess(*xdist, "-p", "no:cacheprovider", "--gradhealth-plots=plots")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["gradhealth: 4 plots written to *plots (one per probe and an overview)"])
    folder = suite.path / "plots"
    assert sorted(p.name for p in folder.iterdir()) == expected_files("png")  # no worker wrote a file of its own
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in folder.iterdir())


def test_svg_on_request(suite):
    result = suite.runpytest_subprocess("--gradhealth-plots=out/plots", "--gradhealth-plots-format=svg")
    result.assert_outcomes(passed=2)
    folder = suite.path / "out" / "plots"
    assert sorted(p.name for p in folder.iterdir()) == expected_files("svg")
    for path in folder.iterdir():
        assert ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_without_matplotlib_the_session_says_so_once_and_passes(suite, xdist):
    suite.makeconftest(BLOCK_MATPLOTLIB)
    result = suite.runpytest_subprocess(*xdist, "-p", "no:cacheprovider", "--gradhealth-plots=plots")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["gradhealth: no plots written to *plots: plots need matplotlib, which is not installed*"]
    )
    assert (
        result.stdout.str().count('need matplotlib, which is not installed: pip install "pytest-gradhealth[plot]"') == 1
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not (suite.path / "plots").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gradhealth-plots-format=svg"], "*--gradhealth-plots-format needs --gradhealth-plots=DIR*"),
        (["--gradhealth-plots=test_suite.py"], "*--gradhealth-plots: *test_suite.py is a file, not a folder*"),
    ],
)
def test_plot_options_are_checked_before_any_test_runs(suite, args, message):
    result = suite.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
