"""The report's options, declared once: `add_report_options(addoption, prefix)` adds them to pytest (prefix
`gradhealth-`) and to the `gradhealth` command (no prefix); `ReportOptions.read` reads them back and `check` refuses
bad ones before any test or probe runs, with the same words in both front ends.

Pure Python: the plugin imports this on every pytest run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gradhealth.errors import InvalidArgumentError
from pytest_gradhealth.report import PLOT_FORMATS
from pytest_gradhealth.report.gate import SIGNIFICANT_SEEDS, FailRule, parse_fail_rule

if TYPE_CHECKING:
    from pytest_gradhealth.report.export import Report
    from pytest_gradhealth.report.records import ProbeRecord


@dataclass(frozen=True)
class Option:
    """One report option: its name without prefix, its help (`{save}` etc. name other options with the prefix),
    and the rest of `addoption`'s keywords."""

    name: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)


FLAG = {"action": "store_true"}
OPTIONS = (
    Option(
        "references",
        "with the report, also probe the reference tanh RNN and LSTMs of each probed model's sizes",
        FLAG,
    ),
    Option("json", "write the whole report as JSON to PATH", {"metavar": "PATH"}),
    Option(
        "markdown",
        "write a Markdown summary (failures and changes first, then every probe) to PATH, e.g. $GITHUB_STEP_SUMMARY",
        {"metavar": "PATH"},
    ),
    Option("save", "save the profiles as a baseline at PATH (refuses to overwrite)", {"metavar": "PATH"}),
    Option("overwrite", "allow {save} to replace an existing baseline", FLAG),
    Option(
        "save-partial",
        "with {save}: save what a failing session, or one that did not run every test of the baseline it replaces, "
        "measured (never an interrupted one), saying what is missing",
        FLAG,
    ),
    Option("compare", "compare the profiles with the baseline at PATH", {"metavar": "PATH"}),
    Option(
        "compare-fail",
        "fail when a probe regressed past EXPR: ratio:10x, half_life:20%%, horizon:5 (repeatable)",
        {"metavar": "EXPR", "action": "append", "default": []},
    ),
    Option("create-missing", "when the {compare} baseline does not exist, write it from this run instead", FLAG),
    Option(
        "plots",
        "write a figure per probe and an overview of them all to DIR (needs the extra pytest-gradhealth[plot])",
        {"metavar": "DIR"},
    ),
    Option("plots-format", "file format of {plots}: png (default) or svg", {"choices": PLOT_FORMATS, "default": None}),
)


def dest(prefix: str, name: str) -> str:
    """The attribute an option is stored under: gradhealth_json, or json without a prefix."""
    return f"{prefix}{name}".replace("-", "_")


def add_report_options(addoption: Callable[..., Any], prefix: str = "", names: Collection[str] | None = None) -> None:
    """Add the report options (those in `names`, or all) through `addoption`, each as `--{prefix}{name}`."""
    flags = {option.name.replace("-", "_"): f"--{prefix}{option.name}" for option in OPTIONS}
    for option in OPTIONS:
        if names is None or option.name in names:
            help_text = option.help.format(**flags)
            addoption(f"--{prefix}{option.name}", dest=dest(prefix, option.name), help=help_text, **option.kwargs)


@dataclass
class ReportOptions:
    """What the user asked of the report; `prefix` is the front end's, for the words of errors and notes."""

    prefix: str = ""
    table: bool = False
    verbosity: int = 0
    json_path: Path | None = None
    markdown_path: Path | None = None
    save_path: Path | None = None
    overwrite: bool = False
    save_partial: bool = False
    compare_path: Path | None = None
    fail_rules: list[FailRule] = field(default_factory=list)
    create_missing: bool = False
    references: bool = False
    plots_dir: Path | None = None
    plots_format: str = PLOT_FORMATS[0]
    baseline: Report | None = None  # read by `check`, once, before the run

    @classmethod
    def read(cls, get: Callable[[str], Any], folder: Path, prefix: str = "", **extra: Any) -> ReportOptions:
        """The options from `get(dest)`, paths relative to `folder`; `extra` sets the rest (table, verbosity)."""

        def value(name: str) -> Any:
            return get(dest(prefix, name))

        def path(name: str) -> Path | None:
            return None if value(name) is None else Path(folder, value(name))

        rules = [parse_fail_rule(text, f"--{prefix}compare-fail") for text in value("compare-fail") or []]
        return cls(
            prefix=prefix,
            json_path=path("json"),
            markdown_path=path("markdown"),
            save_path=path("save"),
            overwrite=bool(value("overwrite")),
            save_partial=bool(value("save-partial")),
            compare_path=path("compare"),
            fail_rules=rules,
            create_missing=bool(value("create-missing")),
            references=bool(value("references")),
            plots_dir=path("plots"),
            plots_format=value("plots-format") or PLOT_FORMATS[0],
            **extra,
        )

    def flag(self, name: str) -> str:
        return f"--{self.prefix}{name}"

    @property
    def active(self) -> bool:
        return bool(
            self.table or self.json_path or self.markdown_path or self.save_path or self.compare_path or self.plots_dir
        )

    def check(self, plots_format_given: bool) -> None:
        """Refuse, before anything runs, what cannot end well: an unwritable path, a baseline that would be
        overwritten by accident or replaced by an output of this run, rules without a baseline, a missing or corrupt
        baseline. Reads the baseline (`self.baseline`): the comparison uses what it held when the run started."""
        for name, target in (("json", self.json_path), ("markdown", self.markdown_path), ("save", self.save_path)):
            _check_file_target(self.flag(name), target)
        _check_file_target(self.flag("compare"), self.compare_path)
        if self.save_path and self.save_path.exists() and not self.overwrite:
            raise InvalidArgumentError(
                f"{self.flag('save')}: {self.save_path} exists and would be overwritten; add {self.flag('overwrite')} "
                "to replace it, or save to another path"
            )
        if self.save_partial and not (self.save_path or self.create_missing):
            raise InvalidArgumentError(f"{self.flag('save-partial')} needs {self.flag('save')}=PATH to save to")
        if self.fail_rules and not self.compare_path:
            raise InvalidArgumentError(f"{self.flag('compare-fail')} needs {self.flag('compare')}=BASELINE")
        if plots_format_given and not self.plots_dir:
            raise InvalidArgumentError(f"{self.flag('plots-format')} needs {self.flag('plots')}=DIR to write to")
        if self.plots_dir and self.plots_dir.exists() and not self.plots_dir.is_dir():
            raise InvalidArgumentError(f"{self.flag('plots')}: {self.plots_dir} is a file, not a folder to write in")
        if self.plots_dir:
            _check_file_target(self.flag("plots"), self.plots_dir / "plot")
        if self.compare_path:
            self._check_baseline(self.compare_path)

    def _check_baseline(self, baseline: Path) -> None:
        for name, output in (("json", self.json_path), ("markdown", self.markdown_path)):
            if output is not None and same_file(output, baseline):
                raise InvalidArgumentError(
                    f"{self.flag(name)}: {output} is the baseline of {self.flag('compare')}: this run's output would "
                    f"replace the baseline it is compared with; write it elsewhere, or update the baseline with "
                    f"{self.flag('save')}={shown(baseline)} {self.flag('overwrite')}"
                )
        if baseline.exists():
            from pytest_gradhealth.report.export import load_report

            self.baseline = load_report(baseline)  # once, now: never re-read after the run wrote files
            self._check_rules_judge(baseline, self.baseline.records)
        elif not self.create_missing:
            raise InvalidArgumentError(
                f"{self.flag('compare')}: baseline {baseline} does not exist; create it with "
                f"{self.flag('save')}={shown(baseline)}, or add {self.flag('create-missing')} to write it from this run"
            )

    def _check_rules_judge(self, baseline: Path, records: Sequence[ProbeRecord]) -> None:
        """Refuse a fail rule that could never fire on some baseline probe: those probes would pass whatever changed."""
        from pytest_gradhealth.report.text import printable

        for rule in self.fail_rules:
            judged = [r for r in records if r.verdict != "disconnected"]  # no figures: nothing for a rule to judge
            unjudged = [(r.key, why) for r in judged if (why := rule.cannot_judge(r.profile))]
            if unjudged:
                key, why = unjudged[0]
                raise InvalidArgumentError(
                    f"fail rule {rule}: {baseline}: {len(unjudged)} probe(s) it cannot judge, so they would pass "
                    f"whatever changed ({printable(key)}: {why}); measure the baseline and this run with "
                    f"{self.flag('seeds')}={SIGNIFICANT_SEEDS} (and re-save the baseline), or gate single draws with "
                    "ratio:10x, half_life:20% or horizon:5"
                )


def shown(path: Path) -> str:
    """`path` as the user would type it: relative to the current folder when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same after resolving `..` and symbolic links, or one inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_file_target(flag: str, path: Path | None) -> None:
    """A file can be written at `path`: it is no folder, and no file stands where a folder above it must be."""
    if path is None:
        return
    if path.is_dir():
        raise InvalidArgumentError(
            f"{flag}: {path} is a folder; give the path of a file, e.g. {path / 'gradhealth.json'}"
        )
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InvalidArgumentError(f"{flag}: cannot write {path}: {blocker} is a file, not a folder")
