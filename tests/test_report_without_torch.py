"""Reading, comparing and plotting a saved report needs no torch; the package has no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pytest_gradhealth
from pytest_gradhealth import GradientProfile
from pytest_gradhealth.report.export import build_report, write_json
from pytest_gradhealth.report.records import ProbeRecord

PACKAGE = Path(pytest_gradhealth.__file__).parent
BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from pytest_gradhealth.cli import main; "


def saved(path: Path, rate: float) -> Path:
    norms = rate ** np.arange(11, -1, -1.0)
    profile = GradientProfile(norms=norms, sample_norms=norms[None], seq_len=12, name="lstm", model="LSTM")
    check = {"assertion": "assert_no_vanishing", "verdict": "ok", "thresholds": {"min_ratio": 1e-6}}
    write_json(path, build_report([ProbeRecord("t::a", "lstm", profile, "ok", check)], [], {}, path.parent))
    return path


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["show", "base.json"], 0, "gradhealth: 1 probe: 1 ok"),
        (["compare", "base.json", "new.json", "--fail", "ratio:10x", "--markdown", "s.md"], 1, "regressed"),
        (["plot", "base.json", "--out", "plots", "--format", "svg"], 0, "overview.svg"),
    ],
)
def test_show_compare_and_plot_run_with_torch_not_importable(tmp_path, args, status, words):
    if args[0] == "plot":
        pytest.importorskip("matplotlib")
    saved(tmp_path / "base.json", 0.9)
    saved(tmp_path / "new.json", 0.5)
    code = BLOCK_TORCH + f"sys.exit(main({args!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == status, result.stderr
    assert words in result.stdout and result.stderr == ""


def test_the_numpy_only_layers_import_neither_torch_nor_the_probe():
    modules = ["metrics", "verdicts", "checks", "profile", "recording", "settings"]
    modules += [f"report.{p.stem}" for p in (PACKAGE / "report").glob("*.py") if p.stem not in ("references",)]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('pytest_gradhealth.' + m)\n"
        "heavy = ('torch', 'pytest_gradhealth.probing', 'pytest_gradhealth.assertions')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _imports(path: Path) -> set[str]:
    """The package modules a module imports at its top level (not inside functions or TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_gradhealth"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pytest_gradhealth"))
    return found


def test_the_package_has_no_import_cycle():
    modules = {
        "pytest_gradhealth." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py"
    }
    graph = {name: _imports(path) & modules.keys() for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in graph[name]:
            assert state.get(other) != 1, f"import cycle: {' -> '.join([*trail, name, other])}"
            if other not in state:
                visit(other, [*trail, name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_public_names_are_listed_once_and_the_type_checking_imports_agree():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {(node.module, alias.name) for node in block.body for alias in node.names}  # type: ignore[attr-defined]
    lazy = {(module, name) for module, names in pytest_gradhealth._LAZY.items() for name in names}
    assert typed == lazy
    assert len(pytest_gradhealth.__all__) == len(set(pytest_gradhealth.__all__))
    for name in pytest_gradhealth.__all__:
        assert getattr(pytest_gradhealth, name) is not None
