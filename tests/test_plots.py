"""Plots: every kind of figure rendered to files, drawn from records of live sessions and saved reports alike."""

from __future__ import annotations

import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report import plots
from pytest_gradhealth.report.export import build_report, load_report, write_json
from pytest_gradhealth.report.records import ProbeRecord

pytest.importorskip("matplotlib", reason='rendering plots needs matplotlib: pip install "pytest-gradhealth[plot]"')

SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAST = 0.5  # every test profile's norm at its last step


def record(
    test: str = "tests/test_models.py::test_lstm",
    probe: str = "lstm",
    rate: float = 0.8,
    seq_len: int = 20,
    measure: str = "input",
    check: dict | None = None,
    norms: np.ndarray | None = None,
) -> ProbeRecord:
    """A probe whose norm decays by `rate` per step back from LAST, with a batch of three spread around it."""
    if norms is None:
        norms = LAST * rate ** np.arange(seq_len - 1, -1, -1.0)
    profile = GradientProfile(
        norms=norms,
        sample_norms=np.vstack([norms / 2, norms, norms * 2]),
        seq_len=len(norms),
        name=probe,
        model="LSTM",
        batch_size=3,
        seed=0,
        dtype="float32",
        device="cpu",
        measure=measure,
        input_size=4,
        hidden_size=8,
    )
    verdict = (check or {}).get("verdict", "ok")
    return ProbeRecord(test, probe, profile, verdict, check)


def reference(label: str, rate: float, seq_len: int = 20, measure: str = "input") -> ProbeRecord:
    ref = record(test="reference 4->8", probe=label, rate=rate, seq_len=seq_len, measure=measure)
    ref.profile.norms *= 7.0  # another scale than the probe's: the figure scales it to meet at the last step
    return ref


def vanishing_check(min_ratio: float) -> dict:
    return {"assertion": "assert_no_vanishing", "verdict": "ok", "thresholds": {"min_ratio": min_ratio}}


def by_gid(figure, gid: str):
    found = [a for a in figure.axes[0].get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist {gid!r}, found {len(found)}"
    return found[0]


def svg(path) -> tuple[set[str], str]:
    """The element ids of an SVG file and all its text."""
    root = ET.parse(path).getroot()
    ids = {element.get("id") for element in root.iter()} - {None}
    text = " ".join("".join(element.itertext()) for element in root.iter(f"{SVG}text"))
    return ids, " ".join(text.split())


# -- files ------------------------------------------------------------------------------------------------


def test_a_probe_and_the_overview_are_written_as_png(tmp_path):
    files = plots.write_plots([record()], [], tmp_path / "plots")
    assert [f.name for f in files] == [
        plots.plot_filename("tests/test_models.py::test_lstm", "lstm", "png"),
        "overview.png",
    ]
    for path in files:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == 850 and 300 <= height <= 1000
        assert 10_000 < len(data) < 300_000


def test_svg_probe_figure_holds_the_curve_its_band_bounds_references_and_readable_labels(tmp_path):
    matching = [reference("tanh RNN", 0.5), reference("LSTM forget_bias=2", 0.95)]
    other_length = reference("tanh RNN", 0.5, seq_len=30)
    files = plots.write_plots([record(check=vanishing_check(1e-3))], [*matching, other_length], tmp_path, "svg")
    ids, text = svg(files[0])
    assert {"profile-0", "band-0", "bound-min_ratio-0", "reference-0-0", "reference-0-1"} <= ids
    assert not {i for i in ids if i.startswith("reference-0-2")}
    for words in (
        "tests/test_models.py::test_lstm (seq_len 20, batch 3, seed 0, float32)",
        "lstm (LSTM), gradient at the input: ok; step 0 gets 0.0144 of the last step's gradient",
        "timestep t (0 = earliest input; the loss is on the output at the last step, t = 19)",
        "gradient norm ‖∂L/∂x_t‖ (log scale)",
        "spread over the batch: min to max of 3 samples",
        "assert_no_vanishing: step 0 must stay at or above 0.001 × the last step",
        "reference tanh RNN, scaled to meet at the last step",
    ):
        assert words in text


def test_svg_overview_holds_every_probe_and_reference(tmp_path):
    records = [record(), record(test="t.py::test_rnn", probe="rnn", rate=0.5)]
    files = plots.write_plots(records, [reference("LSTM", 0.7)], tmp_path, "svg")
    ids, text = svg(files[-1])
    assert files[-1].name == "overview.svg"
    assert {"overview-0", "overview-1", "overview-reference-0"} <= ids
    assert "tests/test_models.py::test_lstm [lstm]: ok, ratio 0.0144" in text
    assert "t.py::test_rnn [rnn]: ok, ratio 1.91e-06" in text
    assert "steps back from the last timestep (lag = seq_len - 1 - t)" in text


def test_plots_of_a_saved_report_are_those_of_the_live_session(tmp_path):
    records = [record(check=vanishing_check(1e-2)), record(test="t.py::test_rnn", probe="rnn", rate=0.5)]
    references = [reference("tanh RNN", 0.5)]
    write_json(tmp_path / "report.json", build_report(records, references, {}, tmp_path))
    saved = load_report(tmp_path / "report.json")
    live = plots.write_plots(records, references, tmp_path / "live", "svg")
    loaded = plots.write_plots(saved.records, saved.references, tmp_path / "loaded", "svg")
    assert {f.name: f.read_bytes() for f in live} == {f.name: f.read_bytes() for f in loaded}


# -- what the figures show --------------------------------------------------------------------------------


def test_the_probe_figure_puts_the_earliest_step_left_on_a_log_axis():
    figure = plots.probe_figure([record(seq_len=12)])
    ax = figure.axes[0]
    line = by_gid(figure, "profile-0")
    assert ax.get_yscale() == "log" and not ax.xaxis_inverted()
    np.testing.assert_array_equal(line.get_xdata(), np.arange(12))
    np.testing.assert_allclose(line.get_ydata(), LAST * 0.8 ** np.arange(11, -1, -1.0))


@pytest.mark.parametrize(
    ("check", "gid", "y"),
    [
        (vanishing_check(1e-3), "bound-min_ratio-0", 1e-3 * LAST),
        (
            {"assertion": "assert_no_exploding", "verdict": "ok", "thresholds": {"max_ratio": 1e3}},
            "bound-max_ratio-0",
            1e3 * LAST,
        ),
        (
            {"assertion": "assert_memory_horizon", "verdict": "ok", "thresholds": {"min_steps": 5, "threshold": 0.01}},
            "bound-horizon-0",
            0.01 * LAST,
        ),
    ],
)
def test_assertion_bounds_are_drawn_relative_to_the_last_step(check, gid, y):
    figure = plots.probe_figure([record(check=check)])
    assert by_gid(figure, gid).get_ydata()[0] == pytest.approx(y)


def test_the_horizon_bound_marks_the_step_it_must_reach_back_to():
    check = {"assertion": "assert_memory_horizon", "verdict": "ok", "thresholds": {"min_steps": 5, "threshold": 0.01}}
    figure = plots.probe_figure([record(seq_len=20, check=check)])
    assert by_gid(figure, "bound-min_steps-0").get_xdata()[0] == 20 - 1 - 5


def test_a_plain_probe_has_no_bounds():
    figure = plots.probe_figure([record()])
    assert not [a for a in figure.axes[0].get_children() if str(a.get_gid()).startswith("bound")]


def test_references_are_scaled_to_meet_the_probe_at_its_last_step():
    ref = reference("tanh RNN", 0.5)
    figure = plots.probe_figure([record()], [ref])
    drawn = by_gid(figure, "reference-0-0").get_ydata()
    np.testing.assert_allclose(drawn, ref.profile.norms / ref.profile.norms[-1] * LAST)


def test_zero_and_nonfinite_steps_are_marked_instead_of_drawn():
    norms = LAST * 0.8 ** np.arange(9, -1, -1.0)
    norms[[0, 1]] = 0.0
    norms[4], norms[6] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plots.probe_figure([record(norms=norms)])
    assert np.isnan(by_gid(figure, "profile-0").get_ydata()[[0, 1, 4, 6]]).all()
    assert [x for x, _ in by_gid(figure, "underflow-0").get_offsets()] == [0, 1]
    assert [x for x, _ in by_gid(figure, "nonfinite-0").get_offsets()] == [4, 6]
    labels = figure.legends[0].get_texts()
    assert {"exactly 0 (underflow, or no path): below the axis", "NaN or Inf"} <= {t.get_text() for t in labels}


def test_a_profile_with_nothing_to_draw_says_so(tmp_path):
    disconnected = record(norms=np.zeros(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = plots.write_plots([disconnected], [], tmp_path, "svg")
    assert "no-data" in svg(files[0])[0]
    _, overview = svg(files[-1])
    assert "not drawn: the last step's norm is 0" in overview


def test_an_lstms_hidden_and_cell_state_of_one_test_share_a_figure(tmp_path):
    hidden, cell = record(measure="hidden"), record(measure="cell", rate=0.9)
    cell.probe = "lstm#2"  # as the plugin names a test's second probe of one model
    other = record(test="t.py::test_other", measure="hidden")
    assert plots.figure_groups([hidden, cell, other]) == [[hidden, cell], [other]]
    files = plots.write_plots([hidden, cell, other], [], tmp_path, "svg")
    assert len(files) == 3  # two probe figures and the overview
    ids, text = svg(tmp_path / plots.plot_filename(hidden.test, hidden.probe, "svg"))
    assert {"profile-0", "profile-1", "band-0", "band-1"} <= ids
    assert "lstm (LSTM), gradient at the hidden state: ok" in text
    assert "lstm#2 (LSTM), gradient at the cell state: ok" in text
    assert "gradient norm (log scale)" in text


def test_a_log_domain_profile_is_drawn_down_to_float64s_range_and_marked_beyond():
    """A renormalised profile 600 decades deep: the overview draws it relative to its last step from its log10 (to
    1e-300, where plain norms would long be 0), and steps past float64's range are marked, not called zero."""
    log10 = np.log10(LAST) - 2.0 * np.arange(299, -1, -1.0)
    samples = np.vstack([log10 - 0.3, log10, log10 + 0.3])
    profile = GradientProfile(
        norms=10.0**log10, sample_norms=10.0**samples, seq_len=300, log10_sample_norms=samples, dtype="float32"
    )
    rec = ProbeRecord("t.py::test_deep", "deep", profile, "vanishing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plots.probe_figure([rec])
        overview = plots.overview_figure([rec])
    beyond = [x for x, _ in by_gid(figure, "beyond-0").get_offsets()]
    assert beyond == list(np.flatnonzero((profile.norms == 0) & np.isfinite(profile.log10_norms)))
    assert not [a for a in figure.axes[0].get_children() if a.get_gid() == "underflow-0"]
    drawn = by_gid(overview, "overview-0").get_ydata()
    relative = 10.0 ** (profile.log10_norms - profile.log10_norms[-1])
    np.testing.assert_allclose(drawn[relative > 0], relative[relative > 0], rtol=1e-12)
    assert 0 < np.nanmin(drawn) < 1e-300


def test_the_overview_shows_each_probe_relative_to_its_last_step_against_the_lag():
    records = [record(seq_len=10), record(test="t.py::test_long", rate=0.5, seq_len=30)]
    figure = plots.overview_figure(records)
    assert figure.axes[0].xaxis_inverted()  # lag grows to the left: the earliest steps are on the left
    for i, r in enumerate(records):
        line = by_gid(figure, f"overview-{i}")
        np.testing.assert_array_equal(line.get_xdata(), r.profile.lags)
        np.testing.assert_allclose(line.get_ydata(), r.profile.norms / LAST)


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path):
    code = f"""
import sys, matplotlib, numpy as np
from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report.plots import write_plots
from pytest_gradhealth.report.records import ProbeRecord
matplotlib.use("svg")
norms = 0.8 ** np.arange(9, -1, -1.0)
profile = GradientProfile(norms=norms, sample_norms=norms[None], seq_len=10)
write_plots([ProbeRecord("t", "p", profile, "ok")], [], {str(tmp_path)!r}, "png")
assert "matplotlib.pyplot" not in sys.modules
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "overview.png").read_bytes()[:8] == PNG_SIGNATURE
