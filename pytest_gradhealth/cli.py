"""`gradhealth`: probe a model, show, compare and plot saved reports, from the command line.

The commands share the plugin's pieces: the settings' parsers, the report options (declared once, here without the
`gradhealth-` prefix), the recorder and its naming rule, and the report pipeline. A table, a file and an exit status
mean the same from either. Only `probe` loads torch; `show`, `compare` and `plot` read a JSON report without it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from pytest_gradhealth import __version__
from pytest_gradhealth.errors import DisconnectedGradientError, GradHealthError, InvalidArgumentError
from pytest_gradhealth.report import PLOT_FORMATS
from pytest_gradhealth.report.gate import parse_fail_rule
from pytest_gradhealth.report.options import ReportOptions, add_report_options
from pytest_gradhealth.settings import HELP, MARKER_OPTIONS, SETTINGS, Settings

if TYPE_CHECKING:
    from torch import nn

    from pytest_gradhealth.profile import GradientProfile
    from pytest_gradhealth.report.pipeline import Outcome, RunState
    from pytest_gradhealth.report.records import ProbeRecord

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # EXIT_FAILED: a gate failed, or a probe failed its thresholds
EXIT_STATUS = """\
Exit status: 0 success; 1 a probe failed the thresholds (probe) or the gate failed: a probe regressed past a --fail
rule, was measured with other settings than its baseline, or was removed (compare); 2 bad arguments or input, such
as a missing or corrupt report.
"""
# `Settings` fields, with their help from the plugin's options: flag -> metavar
SETTING_FLAGS = {
    "batch_size": "N",
    "seed": "N",
    "dtype": "DTYPE",
    "device": "DEVICE",
    "min_ratio": "R",
    "max_ratio": "R",
    "warmup": "K",
    "seeds": "N",
}
OPTION_FLAGS = {  # probe options, parsed as the gradhealth marker parses them: flag -> (metavar, help)
    "measure": (
        "WHERE",
        "where the gradient is measured: input (dL/dx_t, default), hidden (dL/dh_t) or cell (dL/dc_t)",
    ),
    "mode": ("MODE", "eval (default) or train: dropout active, seeded"),
    "input_size": ("N", "feature size of the random inputs (default: read from the model's first recurrent layer)"),
    "vocab_size": ("N", "token models: draw integer tokens below N (default: read from the model's nn.Embedding)"),
}

MAIN_EPILOG = """\
examples:
  gradhealth probe models.py:build_lstm --seq-len 50 100 200 --references
  gradhealth show gradhealth-report.json
  gradhealth compare baseline.json report.json --fail ratio:10x --fail horizon:5
  gradhealth plot report.json --out plots/
  gradhealth diagnose models.py:build_lstm --seq-len 150

Run `gradhealth COMMAND --help` for a command's options.
"""
PROBE_EPILOG = """\
MODULE is a dotted module importable from the current folder (models, mypkg.models) or a path to a .py file
(path/to/models.py). FACTORY is a callable that takes no arguments and returns a torch.nn.Module (a function or an
nn.Module class), or a module attribute that is an nn.Module. Several factories and lengths probe every pair.

examples:
  gradhealth probe models:build_lstm --seq-len 100
  gradhealth probe path/to/models.py:TokenLSTM --seq-len 50 100 200 --references --json report.json
  gradhealth probe models:rnn models:lstm --seq-len 100 --dtype float64 --plot rnn-vs-lstm.png
  gradhealth probe models:build_lstm --seq-len 100 --measure cell --batch-size 16 --seed 1
  gradhealth probe models:build_lstm --seq-len 100 --compare baseline.json --compare-fail ratio:10x
"""
SHOW_EPILOG = """\
examples:
  gradhealth show gradhealth-report.json         # written by pytest --gradhealth-json or gradhealth probe --json
  gradhealth show -q baseline.json               # compact rows; -qq: only the probes that are not ok
"""
COMPARE_EPILOG = """\
Probes are matched by test id and probe name, as the pytest plugin matches them, and compared only when they were
measured with the same settings (seq_len, measure, dtype, batch size, seed, mode, inputs, layer): a probe measured
otherwise is a "mismatch" and fails. A baseline probe the report lacks is "removed" (fails) when the report's run
covered its test, "not run" (does not fail) when it did not. A --fail rule is METRIC:AMOUNT: ratio:10x (the ratio
fell by more than a factor of 10), half_life:20% (fell by more than 20%), horizon:5 (fell by more than 5 steps).
The exit status is 1 when the gate fails, 0 otherwise: usable as a CI gate.

examples:
  gradhealth compare baseline.json report.json
  gradhealth compare baseline.json report.json --fail ratio:10x --fail horizon:5
"""
DIAGNOSE_EPILOG = """\
For each recurrent layer (nn.LSTM/GRU/RNN, each layer and direction, and cells called once per step): gate
statistics and each unit's memory timescale -1/ln(mean forget or update gate), saturated or dead units, the spectral
radius and norm of weight_hh and the mean-field per-step factor; then the standard remedies that apply (forget- or
update-gate bias +1..+3, chrono initialisation, orthogonal weight_hh, identity ReLU recurrence), each applied to a
copy of the model and probed the same way.

examples:
  gradhealth diagnose models:build_lstm --seq-len 150
  gradhealth diagnose models.py:TokenLSTM --seq-len 100 --json diagnosis.json
"""
PLOT_EPILOG = """\
Writes one figure per probe (an LSTM's hidden and cell state measured in one test share a figure) and overview.FMT
comparing every probe, each relative to its last step's gradient. Needs matplotlib:
pip install "pytest-gradhealth[plot]".

examples:
  gradhealth plot gradhealth-report.json --out plots/
  gradhealth plot gradhealth-report.json --out plots/ --format svg
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a bad argument in one line, `gradhealth: error: ...`, and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"gradhealth: error: {message} (see: {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `gradhealth` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except (GradHealthError, OSError) as exc:
        print(f"gradhealth: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradhealth",
        description="Measure how far the gradient of a recurrent PyTorch model reaches back in time, and show,\n"
        "compare and plot the reports that pytest --gradhealth-json and gradhealth probe --json write.",
        epilog=MAIN_EPILOG + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    table = _Parser(add_help=False)
    table.add_argument("-v", "--verbose", action="count", default=0, help="more columns: model, measure, dtype, batch")
    table.add_argument(
        "-q", "--quiet", action="count", default=0, help="compact rows; -qq: only the probes that are not ok"
    )

    def command(name: str, run: Callable[[argparse.Namespace], int], summary: str, epilog: str, **kw: Any) -> Any:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=epilog + EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )
        sub.set_defaults(command=run)
        return sub

    probe = command(
        "probe",
        _probe,
        "Probe the model a factory builds at one or more sequence lengths and print the report table.",
        PROBE_EPILOG,
        parents=[table],
    )
    probe.add_argument("factories", nargs="+", metavar="MODULE:FACTORY", help="what builds the model (see below)")
    probe.add_argument(
        "--seq-len", nargs="+", required=True, type=_parser("seq_len", SETTINGS), metavar="N", help="lengths to probe"
    )
    output = probe.add_argument_group("outputs besides the table (the pytest plugin's --gradhealth-* report options)")
    add_report_options(output.add_argument)
    output.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the probe to FILE (.png or .svg); several probes: an overview"
    )
    _add_probe_options(probe)

    diagnose = command(
        "diagnose",
        _diagnose,
        "Explain why the gradient vanishes in the model a factory builds: gates, memory timescales, spectra, and the "
        "standard remedies measured on copies of the model.",
        DIAGNOSE_EPILOG,
    )
    diagnose.add_argument("factories", nargs="+", metavar="MODULE:FACTORY", help="what builds the model")
    diagnose.add_argument(
        "--seq-len", nargs="+", required=True, type=_parser("seq_len", SETTINGS), metavar="N", help="lengths to probe"
    )
    diagnose.add_argument("--no-what-ifs", action="store_true", help="read the layers only; measure no remedies")
    diagnose.add_argument("--json", type=Path, metavar="FILE", help="write the diagnoses as JSON to FILE")
    diagnose.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the memory timescales to FILE (.png or .svg; one length)"
    )
    _add_probe_options(diagnose)

    show = command("show", _show, "Print the report table of a saved JSON report.", SHOW_EPILOG, parents=[table])
    show.add_argument(
        "report",
        type=Path,
        metavar="REPORT.json",
        help="written by pytest --gradhealth-json or gradhealth probe --json",
    )

    compare = command(
        "compare", _compare, "Compare a report with a baseline, probe by probe, and gate on thresholds.", COMPARE_EPILOG
    )
    compare.add_argument("baseline", type=Path, metavar="BASELINE.json", help="the report to compare with")
    compare.add_argument("report", type=Path, metavar="REPORT.json", help="the new report")
    compare.add_argument(
        "--fail", action="append", default=[], metavar="EXPR", help="exit 1 when a probe regressed past EXPR"
    )
    add_report_options(compare.add_argument, names=("markdown",))

    plot = command("plot", _plot, "Draw the figures of a saved JSON report.", PLOT_EPILOG)
    plot.add_argument(
        "report",
        type=Path,
        metavar="REPORT.json",
        help="written by pytest --gradhealth-json or gradhealth probe --json",
    )
    plot.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the figures to")
    plot.add_argument("--format", choices=PLOT_FORMATS, default=PLOT_FORMATS[0], help="file format (default png)")
    return parser


def _add_probe_options(command: argparse.ArgumentParser) -> None:
    options = command.add_argument_group("how to probe (the pytest plugin's --gradhealth-* settings)")
    for key, metavar in SETTING_FLAGS.items():
        options.add_argument(_flag(key), type=_parser(key, SETTINGS), metavar=metavar, help=HELP[key])
    for key, (metavar, text) in OPTION_FLAGS.items():
        options.add_argument(_flag(key), type=_parser(key, MARKER_OPTIONS), metavar=metavar, help=text)


def _settings(args: argparse.Namespace) -> Settings:
    """The probe settings given on the command line."""
    return Settings(
        **{key: getattr(args, key) for key in SETTING_FLAGS if getattr(args, key) is not None},
        options={key: getattr(args, key) for key in OPTION_FLAGS if getattr(args, key) is not None},
    )


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def _parser(key: str, table: dict[str, tuple[str, Callable[[Any], Any]]]) -> Callable[[str], Any]:
    """An argparse type from the plugin's parser of the same setting, with its wording on a bad value."""
    expected, parse = table[key]

    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {raw!r}") from None

    return convert


# -- the commands --------------------------------------------------------------------------------------------


def _probe(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = ReportOptions.read(vars(args).get, Path(), table=True, verbosity=args.verbose - args.quiet)
    options.check(plots_format_given=args.plots_format is not None)
    models = {spec: load_model(spec) for spec in args.factories}  # every factory, before any probe runs
    from pytest_gradhealth.probing import make_options, run_probe  # torch: after the checks that need none
    from pytest_gradhealth.recording import Recorder, observe
    from pytest_gradhealth.report import plots
    from pytest_gradhealth.report.records import ProbeRecord

    if args.plot is not None:
        plots.plot_format(args.plot)
        plots.require_matplotlib()

    records: list[ProbeRecord] = []
    for spec, model in models.items():

        def sink(raw: dict[str, Any], profile: GradientProfile, test: str = spec) -> None:
            records.append(ProbeRecord.from_raw(test, raw, settings.min_ratio, settings.max_ratio, profile))

        with observe(Recorder(sink)):
            for seq_len in args.seq_len:
                try:  # named by its length, so that probes of several lengths keep their keys across runs
                    name = f"{type(model).__name__} seq_len={seq_len}"
                    run_probe(model, make_options(model, seq_len, {**settings.probe_options(), "name": name}))
                except DisconnectedGradientError:
                    pass  # recorded with the verdict "disconnected", as in a test
    outcome = _pipeline(options, records, settings)
    if args.references and not outcome.references:
        print("gradhealth: no reference models: they copy the sizes of an nn.RNN/LSTM/GRU, and the model has none")
    if args.plot is not None:
        groups = plots.figure_groups(records)
        one = len(groups) == 1
        plots.save_figure(
            plots.probe_figure(groups[0], outcome.references)
            if one
            else plots.overview_figure(records, outcome.references),
            args.plot,
        )
        print(f"gradhealth: plot written to {args.plot}")
    failing = [r for r in records if r.verdict != "ok"]
    if failing:
        print(
            f"gradhealth: {len(failing)} probe(s) failed the thresholds (min_ratio {settings.min_ratio:g}, "
            f"max_ratio {settings.max_ratio:g}): {', '.join(sorted({r.verdict for r in failing}))}"
        )
    return EXIT_FAILED if failing or outcome.failed else EXIT_OK


def _diagnose(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.json is not None:
        ReportOptions(json_path=args.json).check(plots_format_given=False)  # a path it can write, before any probe
    if args.plot is not None:
        from pytest_gradhealth.report import plots

        plots.plot_format(args.plot)
        plots.require_matplotlib()
        if len(args.factories) * len(args.seq_len) > 1:
            raise InvalidArgumentError("--plot draws one diagnosis: give one MODULE:FACTORY and one --seq-len")
    models = {spec: load_model(spec) for spec in args.factories}
    from pytest_gradhealth.diagnosing import diagnose
    from pytest_gradhealth.report.export import write_json

    diagnoses = []
    for spec, model in models.items():
        for seq_len in args.seq_len:
            name = f"{type(model).__name__} seq_len={seq_len}"
            options = {**settings.probe_options(), "name": name}
            diagnoses.append(diagnose(model, seq_len, what_ifs=not args.no_what_ifs, **options))
            _print([f"{spec}:", *(f"  {line}" for line in diagnoses[-1].lines())])
    if args.json is not None:
        write_json(args.json, {"diagnoses": [d.to_dict() for d in diagnoses]})
        print(f"gradhealth: diagnoses written to {args.json}")
    if args.plot is not None:
        plots.save_figure(plots.timescale_figure(diagnoses[0]), args.plot)
        print(f"gradhealth: timescales drawn to {args.plot}")
    return EXIT_OK


def _pipeline(
    options: ReportOptions,
    records: Sequence[ProbeRecord],
    settings: Settings,
    state: RunState | None = None,
    references: Sequence[ProbeRecord] = (),
) -> Outcome:
    """Runs the report pipeline as the plugin does, and prints its lines."""
    from pytest_gradhealth.report.pipeline import Pipeline, RunState

    width, color = _terminal()
    limits = {"min_ratio": settings.min_ratio, "max_ratio": settings.max_ratio}
    pipeline = Pipeline(options, limits, Path.cwd(), width=width, color=color)
    outcome = pipeline.run(records, state or RunState(), references)
    _print(outcome.lines)
    return outcome


def _show(args: argparse.Namespace) -> int:
    from pytest_gradhealth.report.export import load_report

    report = load_report(args.report)
    options = ReportOptions(table=True, verbosity=args.verbose - args.quiet)
    _pipeline(options, report.records, Settings(), references=report.references)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    rules = [parse_fail_rule(text, "--fail") for text in args.fail]
    options = ReportOptions.read(vars(args).get, Path())  # --markdown
    options.compare_path, options.fail_rules = args.baseline, rules
    options.check(plots_format_given=False)  # reads the baseline; refuses a --markdown path that is the baseline
    from pytest_gradhealth.report.export import load_report
    from pytest_gradhealth.report.pipeline import RunState

    report = load_report(args.report)
    state = RunState(scope=report.scope, exists=lambda file: Path(file).exists())
    return EXIT_FAILED if _pipeline(options, report.records, Settings(), state).failed else EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from pytest_gradhealth.report import plots
    from pytest_gradhealth.report.export import load_report

    plots.require_matplotlib()
    report = load_report(args.report)
    if not report.records:
        print(f"gradhealth: {args.report} holds no probes: nothing to plot")
    _print(str(path) for path in plots.write_plots(report.records, report.references, args.out, args.format))
    return EXIT_OK


# -- shared pieces -------------------------------------------------------------------------------------------


def load_model(spec: str) -> nn.Module:
    """The model that `MODULE:FACTORY` names; every problem is an `InvalidArgumentError` that says what to give."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise InvalidArgumentError(
            f"{spec!r}: expected MODULE:FACTORY, such as models:build_lstm or path/to/models.py:build_lstm"
        )
    target: Any = _import(module_name)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidArgumentError(f"{spec}: {module_name} has no attribute {attribute!r}") from None
    from torch import nn

    if isinstance(target, nn.Module):
        return target
    if not callable(target):
        raise InvalidArgumentError(
            f"{spec}: {attribute} is a value of type {type(target).__name__}, not a factory: give a callable that "
            "returns a torch.nn.Module, or an nn.Module"
        )
    try:
        model = target()
    except SystemExit as exc:
        raise InvalidArgumentError(f"{spec}: calling {attribute}() called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the user's code: any failure is reported in one line, not a traceback
        raise InvalidArgumentError(f"{spec}: calling {attribute}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"{spec}: {attribute}() returned a value of type {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _import(name: str) -> ModuleType:
    """A module by dotted name (importable from the current folder) or by the path of its .py file."""
    try:
        if name.endswith(".py") or "/" in name or os.sep in name:
            return _import_file(Path(name))
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(name)
    except GradHealthError:
        raise
    except SystemExit as exc:
        raise InvalidArgumentError(
            f"importing {name} called sys.exit({exc.code!r}): a module to probe must not exit while it loads "
            "(keep script code under `if __name__ == '__main__':`)"
        ) from None
    except Exception as exc:  # not found, or the user's module failed as it ran
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and (name == missing or name.startswith(f"{missing}.")):
            raise InvalidArgumentError(
                f"no module named {missing!r}: give a module importable from the current folder ({os.getcwd()}) "
                "or the path of a .py file"
            ) from None
        raise InvalidArgumentError(f"importing {name} failed: {type(exc).__name__}: {exc}") from None


def _import_file(path: Path) -> ModuleType:
    """Run a .py file as a module named after it; its folder goes on sys.path, as when it runs as a script."""
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _terminal() -> tuple[int, bool]:
    """Width of the terminal (or $COLUMNS) and whether to colour: only a terminal, and not under $NO_COLOR."""
    return shutil.get_terminal_size().columns, sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)
