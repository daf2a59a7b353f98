"""What needs no matplotlib: file names safe on every file system, and the message when matplotlib is missing."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report import plots
from pytest_gradhealth.report.records import ProbeRecord

WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(10))}


def test_without_matplotlib_plots_name_the_extra_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    norms = 0.8 ** np.arange(9, -1, -1.0)
    probe = ProbeRecord("t.py::test", "p", GradientProfile(norms=norms, sample_norms=norms[None], seq_len=10), "ok")
    with pytest.raises(plots.MatplotlibMissingError, match=re.escape('pip install "pytest-gradhealth[plot]"')):
        plots.write_plots([probe], [], tmp_path / "plots")
    assert not (tmp_path / "plots").exists()


def test_a_file_name_keeps_the_readable_part_of_the_test_id():
    name = plots.plot_filename("tests/test_m.py::test_a[x/y: 1]", "lstm", "png")
    assert re.fullmatch(r"tests_test_m\.py_test_a_x_y_1_-lstm-[0-9a-f]{10}\.png", name)


@pytest.mark.parametrize("device", ["con", "NUL", "Com1", "lpt9"])
def test_a_file_name_is_never_a_reserved_windows_device_name(device):
    assert plots.plot_filename(device, "", "png").startswith(f"_{device}")
    assert plots.plot_filename(f"{device}.py::test", "p", "svg").startswith(f"_{device}.py_test")


@given(test=st.text(), probe=st.text())
def test_file_names_are_safe_on_every_file_system(test, probe):
    name = plots.plot_filename(test, probe, "svg")
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*-[0-9a-f]{10}\.svg", name), name
    assert len(name) <= 100
    assert name.split(".")[0].upper() not in WINDOWS_DEVICES  # Windows ignores what follows the first dot


@given(first=st.tuples(st.text(), st.text()), second=st.tuples(st.text(), st.text()))
def test_distinct_probes_never_share_a_file_name_even_ignoring_case(first, second):
    if first != second:
        assert plots.plot_filename(*first, "png").lower() != plots.plot_filename(*second, "png").lower()
