"""Figures of recorded gradient profiles, drawn with matplotlib (the optional extra `plot`).

Figures are drawn from `ProbeRecord`s, so a live session and a saved JSON report plot alike. matplotlib is imported
only when a figure is drawn, onto a Figure with its own Agg canvas: pyplot's state and the user's backend are left
alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_gradhealth.checks import from_record
from pytest_gradhealth.diagnosis import Diagnosis
from pytest_gradhealth.errors import GradHealthError, InvalidArgumentError
from pytest_gradhealth.metrics import METRICS, number
from pytest_gradhealth.report import PLOT_FORMATS
from pytest_gradhealth.report.records import ProbeRecord, reference_key, report_order

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pytest_gradhealth.profile import GradientProfile

INSTALL = 'pip install "pytest-gradhealth[plot]"'
OVERVIEW = "overview"
WIDTH = 8.5  # inches, at 100 dpi
MAX_NAME = 80  # characters of the readable part of a file name, before its hash and extension
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(10))}
_MEASURES = {
    "input": ("input", "‖∂L/∂x_t‖"),
    "hidden": ("hidden state", "‖∂L/∂h_t‖"),
    "cell": ("cell state", "‖∂L/∂c_t‖"),
}


class MatplotlibMissingError(GradHealthError, ImportError):
    """A plot was asked for, but matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise `MatplotlibMissingError`, naming the extra to install, unless matplotlib can be imported."""
    _matplotlib_classes()


def _matplotlib_classes() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas: a figure drawn without pyplot, whatever the user's backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissingError(f"plots need matplotlib, which is not installed: {INSTALL}") from None
    return Figure, FigureCanvasAgg


def _figure() -> tuple[Figure, Axes]:
    """A figure on its own Agg canvas, with one log-scale axes; `_finish` sizes it to its title and legend."""
    figure_class, canvas_class = _matplotlib_classes()
    from matplotlib.ticker import MaxNLocator

    figure = figure_class(figsize=(WIDTH, 5.0), layout="constrained")
    canvas_class(figure)
    ax = figure.add_subplot()
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # timesteps and lags are whole steps
    ax.grid(True, which="major", alpha=0.3)
    return figure, ax


def _finish(figure: Figure, ax: Axes, title: str, title_size: float) -> Figure:
    """The title, a legend below the axes (two columns when its labels are short), and a height that leaves the
    axes their room whatever the number of title lines and legend entries."""
    _no_data_note(ax)
    ax.set_title(title, fontsize=title_size, loc="left")
    labels = ax.get_legend_handles_labels()[1]
    columns = 2 if labels and len(labels) > 4 and max(map(len, labels)) <= 60 else 1
    figure.legend(loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    rows = -(-len(labels) // columns)
    figure.set_size_inches(WIDTH, 3.6 + 0.2 * (title.count("\n") + 1) + 0.17 * rows)
    return figure


# -- file names ----------------------------------------------------------------------------------------------


def plot_filename(test: str, probe: str, fmt: str) -> str:
    """A file name for the figure of `probe` in `test`, valid on every file system.

    ASCII letters, digits, `.`, `_` and `-` only; no leading dot or dash; never a reserved Windows device name;
    at most 100 characters. A hash of the full ids keeps distinct probes apart, also on case-insensitive systems.
    """
    digest = hashlib.sha256(json.dumps([test, probe]).encode()).hexdigest()[:10]
    readable = _UNSAFE.sub("_", f"{test}-{probe}").strip("._-")[:MAX_NAME].rstrip("._-") or "probe"
    if readable.split(".")[0].upper() in _RESERVED:
        readable = f"_{readable}"
    return f"{readable}-{digest}.{fmt}"


def check_format(fmt: str) -> str:
    """`fmt` when it is a format the plots are written in."""
    if fmt not in PLOT_FORMATS:
        raise InvalidArgumentError(f"plots are written as {' or '.join(PLOT_FORMATS)}, not {fmt!r}")
    return fmt


def plot_format(path: Path) -> str:
    """The format a plot's file name asks for by its suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise InvalidArgumentError(
            f"{path}: a plot's file name must end in {' or '.join(f'.{f}' for f in PLOT_FORMATS)}"
        )
    return suffix


# -- what goes in which figure -------------------------------------------------------------------------------


def figure_groups(records: Sequence[ProbeRecord]) -> list[list[ProbeRecord]]:
    """Records drawn in one figure each: the measures of one model in one test (an LSTM's hidden and cell state)
    share a figure; every other probe has its own."""
    groups: list[list[ProbeRecord]] = []
    for record in records:
        joins = (
            g
            for g in groups
            if _one_model(g[0]) == _one_model(record) and record.profile.measure not in {r.profile.measure for r in g}
        )
        group = next(joins, None)
        if group is None:
            groups.append([record])
        else:
            group.append(record)
    return groups


def _one_model(record: ProbeRecord) -> tuple:
    """What records of one model in one test share, whatever they measured."""
    p = record.profile
    return (record.test, p.name, p.model, p.seq_len, p.batch_size, p.seed)


def write_plots(
    records: Sequence[ProbeRecord], references: Sequence[ProbeRecord], folder: Path, fmt: str = "png"
) -> list[Path]:
    """A figure per probe (see `figure_groups`), the memory timescales of each failing probe that carries a
    diagnosis, and, when there are probes, `overview.<fmt>` comparing them all, in the order of the JSON report.

    Returns the files written, the overview last.
    """
    check_format(fmt)
    require_matplotlib()
    records = sorted(records, key=report_order)  # as in the JSON report: a saved report plots the same
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for group in figure_groups(records):
        path = folder / plot_filename(group[0].test, group[0].probe, fmt)
        save_figure(probe_figure(group, references), path)
        files.append(path)
    for record in records:  # failing assertions that carry a diagnosis: their layers' timescales
        if (record.check or {}).get("diagnosis") is not None:
            path = folder / plot_filename(record.test, f"{record.probe} timescales", fmt)
            save_figure(timescale_figure(Diagnosis.from_dict(record.check["diagnosis"])), path)
            files.append(path)
    if records:
        path = folder / f"{OVERVIEW}.{fmt}"
        save_figure(overview_figure(records, references), path)
        files.append(path)
    return files


def save_figure(figure: Figure, path: Path) -> Path:
    """Write `figure` in the format its suffix names (.png or .svg); SVG text stays text, with no date in it."""
    import matplotlib

    fmt = plot_format(path)
    metadata = {"Date": None} if fmt == "svg" else {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pytest-gradhealth"}):
        figure.savefig(path, format=fmt, dpi=100, metadata=metadata)
    return Path(path)


# -- memory timescales ---------------------------------------------------------------------------------------


def timescale_figure(diagnosis: Diagnosis) -> Figure:
    """A histogram of the units' memory timescales, one outline per gated layer, with seq_len marked: units to its
    right keep their state over the whole sequence. Timescales beyond the axis are counted in its last bin."""
    figure, ax = _figure()
    ax.set_yscale("linear")
    ax.set_xscale("log")
    seq_len = diagnosis.profile.seq_len
    layers = [layer for layer in diagnosis.layers if layer.timescales is not None and len(layer.timescales)]
    finite = np.concatenate([layer.timescales[np.isfinite(layer.timescales)] for layer in layers] or [np.ones(1)])
    low, high = max(float(finite.min()), 0.5), max(float(finite.max()), 2.0 * seq_len)
    bins = np.geomspace(low / 1.05, high * 1.05, 31)
    for i, layer in enumerate(layers):
        values = np.clip(layer.timescales, bins[0], bins[-1])
        label = f"{layer.label}: {layer.reaching(seq_len)} of {len(values)} units reach seq_len"
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label, gid=f"timescales-{i}")
    ax.axvline(seq_len, color="black", linestyle="--", linewidth=1, label=f"seq_len = {seq_len}", gid="seq-len")
    if not layers:
        ax.text(0.5, 0.5, "no gated layer: no memory timescales", transform=ax.transAxes, ha="center", gid="no-data")
    ax.set_xlabel("memory timescale -1 / ln(mean forget or update gate), steps")
    ax.set_ylabel("units")
    ax.set_title(_shorten(f"{diagnosis.profile.name or diagnosis.profile.model}: memory timescales"), loc="left")
    figure.legend(loc="outside lower center", fontsize=8, frameon=False)
    figure.set_size_inches(WIDTH, 3.8 + 0.17 * (len(layers) + 1))
    return figure


# -- the figure of one probe ---------------------------------------------------------------------------------


def probe_figure(records: Sequence[ProbeRecord], references: Sequence[ProbeRecord] = ()) -> Figure:
    """The gradient norm per timestep on a log axis, earliest step on the left, for one probe (or the measures of one
    model, see `figure_groups`): the batch's spread as a band, the bounds of the assertion that checked it, and the
    reference models measured with the same sizes and options, scaled to meet it at the last step."""
    figure, ax = _figure()
    several = len(records) > 1
    styles = dict(zip(dict.fromkeys(r.probe for r in references), ("C3", "C4", "C5", "C6", "C7", "C8"), strict=False))
    for i, record in enumerate(records):
        p = record.profile
        colour = f"C{i}"
        what = f" ({_measure(p)})" if several else ""
        _band(ax, p, colour, i, what)
        ax.plot(
            p.steps,
            _drawable(p.norms),
            color=colour,
            lw=2,
            label=f"{record.probe}{what}: gradient norm, root mean square over the batch",
            gid=f"profile-{i}",
            **_markers(p),
        )
        _bounds(ax, record, colour, i)
        _mark_unplottable(ax, p.steps, p.norms, p.log10_norms, colour, f"{i}")
        if _relative(p) is None:
            continue  # nothing for a reference to meet at the last step
        matching = (r for r in references if reference_key(r.profile) == reference_key(p))
        for j, (ref, relative) in enumerate((r, _relative(r.profile)) for r in matching):
            if relative is not None:
                ax.plot(
                    ref.profile.steps,
                    _drawable(relative * p.norms[-1]),
                    color=styles.get(ref.probe, "0.4"),
                    ls=("--", ":", "-.")[i % 3],
                    lw=1.2,
                    label=f"reference {ref.probe}{what}, scaled to meet at the last step",
                    gid=f"reference-{i}-{j}",
                )
    head = records[0].profile
    ax.set_xlim(-0.5, head.seq_len - 0.5)
    ax.set_xlabel(
        f"timestep t (0 = earliest input; the loss is on the output at the last step, t = {head.seq_len - 1})"
    )
    symbol = "" if several or head.measure not in _MEASURES else f" {_MEASURES[head.measure][1]}"
    ax.set_ylabel(f"gradient norm{symbol} (log scale)")
    return _finish(figure, ax, _probe_title(records), 9)


def _probe_title(records: Sequence[ProbeRecord]) -> str:
    head = records[0].profile
    lines = [f"{records[0].test}  (seq_len {head.seq_len}, batch {head.batch_size}, seed {head.seed}, {head.dtype})"]
    for record in records:
        p = record.profile
        figures = (
            f"step 0 gets {METRICS['ratio'].show(p)} of the last step's gradient, "
            f"half-life {METRICS['half_life'].show(p)} steps"
            if np.isfinite(p.ratio)
            else "no ratio: the first or the last step's norm is zero, NaN or Inf"
        )
        model = "" if p.model == record.probe else f" ({p.model})"
        lines.append(f"{record.probe}{model}, gradient at the {_measure(p)}: {record.verdict}; {figures}")
    return "\n".join(wrapped for line in lines for wrapped in textwrap.wrap(line, 110, break_on_hyphens=False))


def _band(ax: Axes, p: GradientProfile, colour: str, i: int, what: str) -> None:
    """The spread over the batch: the smallest and largest sample's norm at each step (NaN where none reaches)."""
    samples = np.where(np.isfinite(p.sample_norms) & (p.sample_norms > 0), p.sample_norms, np.nan)
    reached = ~np.all(np.isnan(samples), axis=0)
    if len(samples) < 2 or not reached.any():
        return
    low = np.full(len(p.steps), np.nan)
    high = np.full(len(p.steps), np.nan)
    low[reached] = np.nanmin(samples[:, reached], axis=0)
    high[reached] = np.nanmax(samples[:, reached], axis=0)
    ax.fill_between(
        p.steps,
        low,
        high,
        color=colour,
        alpha=0.18,
        lw=0,
        gid=f"band-{i}",
        label=f"spread over the batch{what}: min to max of {len(samples)} samples",
    )


def _bounds(ax: Axes, record: ProbeRecord, colour: str, i: int) -> None:
    """The bounds of the check that judged the record, drawn relative to its last step's norm."""
    check = from_record(record.check)
    last = float(record.profile.norms[-1])
    if check is None or not (np.isfinite(last) and last > 0):
        return
    for bound in check.bounds(record.profile):
        line = ax.axhline if bound.axis == "y" else ax.axvline
        value = bound.value * last if bound.axis == "y" else bound.value
        line(value, ls=bound.style, gid=f"bound-{bound.name}-{i}", color=colour, lw=1, alpha=0.9, label=bound.label)


# -- the overview of a session -------------------------------------------------------------------------------


def overview_figure(records: Sequence[ProbeRecord], references: Sequence[ProbeRecord] = ()) -> Figure:
    """Every probe on one log axis, each relative to its own last step's norm so models and lengths compare, against
    the lag (steps back from the last timestep); the earliest steps are on the left, as in a probe's figure."""
    figure, ax = _figure()
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    for i, record in enumerate(records):
        p = record.profile
        label = f"{record.key}{_measure_note(p)}: {record.verdict}, ratio {METRICS['ratio'].show(p)}"
        style = {"color": f"C{i % 10}", "ls": ("-", "--", "-.", ":")[i // 10 % 4], "lw": 1.8}
        _overview_line(ax, record, label, f"overview-{i}", style)
    dashes = dict(zip(dict.fromkeys(r.probe for r in references), ((0, (1, 1)), "--", "-."), strict=False))
    for j, ref in enumerate(references):
        p = ref.profile
        label = f"reference {ref.probe} {p.input_size}->{p.hidden_size}, seq_len {p.seq_len}{_measure_note(p)}"
        style = {"color": "0.4", "ls": dashes.get(ref.probe, ":"), "lw": 1.1, "marker": None}
        _overview_line(ax, ref, label, f"overview-reference-{j}", style)
    ax.invert_xaxis()
    ax.set_xlabel("steps back from the last timestep (lag = seq_len - 1 - t); the earliest inputs are on the left")
    ax.set_ylabel("gradient norm ÷ its last step's (log scale)")
    title = (
        f"How much of the last step's gradient reaches back in time: {len(records)} "
        f"probe{'s' * (len(records) != 1)}, each relative to its own last step"
    )
    return _finish(figure, ax, title, 10)


def _overview_line(ax: Axes, record: ProbeRecord, label: str, gid: str, style: dict[str, Any]) -> None:
    p = record.profile
    relative = _relative(p)
    if relative is None:
        label = f"{label} (not drawn: the last step's norm is {number(float(p.norms[-1]))})"
        ax.plot([], [], label=_shorten(label), gid=gid, **style)
        return
    ax.plot(p.lags, _drawable(relative), label=_shorten(label), gid=gid, **{**_markers(p), **style})
    _mark_unplottable(ax, p.lags, relative, p.log10_norms, style["color"], gid)


# -- shared pieces -------------------------------------------------------------------------------------------


def _measure(p: GradientProfile) -> str:
    """Where the gradient was measured, in words: input, hidden state, cell state."""
    return _MEASURES.get(p.measure, (p.measure,))[0]


def _measure_note(p: GradientProfile) -> str:
    """`_measure` in parentheses for a state measure; nothing for the usual input measure."""
    return "" if p.measure == "input" else f" ({_measure(p)})"


def _relative(p: GradientProfile) -> np.ndarray | None:
    """The norms over the last step's norm (from their log10, so a float32 model's 1e-300 is drawn), or None when that
    is zero or not finite."""
    last = float(p.log10_norms[-1])
    return 10.0 ** (p.log10_norms - last) if np.isfinite(last) else None


def _drawable(values: np.ndarray) -> np.ndarray:
    """Values a log axis can show: zeros and NaN/Inf become gaps (`_mark_unplottable` marks them)."""
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _markers(p: GradientProfile) -> dict[str, Any]:
    """Dots on the measured steps when they are few or only some steps were measured."""
    sparse = len(p.steps) <= 40 or len(p.steps) < p.seq_len
    return {"marker": "o", "ms": 3} if sparse else {}


def _mark_unplottable(ax: Axes, x: np.ndarray, values: np.ndarray, log10: np.ndarray, colour: str, gid: str) -> None:
    """Steps whose drawn `values` a log axis has no place for: exactly zero, or a gradient below float64's range that
    only its `log10` holds (triangles at the bottom), NaN/Inf (crosses at the top); they must not look like a gap in
    the measurement."""
    at_x = ax.get_xaxis_transform()  # x in data, y as a fraction of the axes
    for name, where, y, marker, label in (
        ("underflow", log10 == -np.inf, 0.02, "v", "exactly 0 (underflow, or no path): below the axis"),
        ("beyond", np.isfinite(log10) & (values == 0), 0.02, "^", "below float64's range (profile.log10_norms)"),
        ("nonfinite", np.isnan(log10) | (log10 == np.inf), 0.98, "X", "NaN or Inf"),
    ):
        if where.any():
            shown = label not in [artist.get_label() for artist in ax.get_children()]
            ax.scatter(
                x[where],
                np.full(int(where.sum()), y),
                transform=at_x,
                marker=marker,
                s=28,
                color=colour,
                edgecolors="black" if name == "nonfinite" else "none",
                clip_on=False,
                zorder=5,
                label=label if shown else "_nolegend_",
                gid=f"{name}-{gid}",
            )


def _no_data_note(ax: Axes) -> None:
    """A note instead of an empty log axis when no curve has a finite, positive point."""
    curves = [line for line in ax.get_lines() if str(line.get_gid()).startswith(("profile", "overview", "reference"))]
    if any(np.any(np.isfinite(line.get_ydata()) & (line.get_ydata() > 0)) for line in curves if len(line.get_ydata())):
        return
    ax.set_ylim(1e-3, 1e1)
    ax.text(0.5, 0.5, "no finite, non-zero gradient norm to draw", transform=ax.transAxes, ha="center", gid="no-data")


def _shorten(text: str, width: int = 110) -> str:
    """`text`, cut in the middle when longer than `width`: test ids differ at both ends."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-(width - 1 - half) :]}"
