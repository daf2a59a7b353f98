"""What users install: the wheel holds every module of the source tree, the sdist holds what it takes to test it, and
the installed package is a working pytest plugin and command.

`make test` (what CI runs) builds the sdist and the wheel, installs the wheel and sets GRADHEALTH_DIST and
GRADHEALTH_SOURCE; without them (the editable loop) the distributions are built here from the checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

import pytest_gradhealth

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(os.environ.get("GRADHEALTH_SOURCE", ROOT))
SCRIPTS = Path(sysconfig.get_path("scripts"))


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the sdist under test: the ones `make test` built, or built now from the checkout."""
    folder = os.environ.get("GRADHEALTH_DIST")
    if folder is None:
        folder = tmp_path_factory.mktemp("dist")
        built = subprocess.run(
            [sys.executable, "-m", "build", "-q", "--outdir", str(folder), str(SOURCE)], capture_output=True, text=True
        )
        assert built.returncode == 0, f"python -m build failed:\n{built.stdout}\n{built.stderr}"
    wheels, sdists = sorted(Path(folder).glob("*.whl")), sorted(Path(folder).glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {folder}: {wheels + sdists}"
    return wheels[0], sdists[0]


def source_modules() -> set[str]:
    modules = {p.relative_to(SOURCE).as_posix() for p in (SOURCE / "pytest_gradhealth").rglob("*.py")}
    assert "pytest_gradhealth/report/__init__.py" in modules, f"no package source under {SOURCE}"
    return modules


def test_the_wheel_holds_every_module_of_the_source_tree(dists):
    names = set(zipfile.ZipFile(dists[0]).namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"the wheel lacks {missing}: pip install . would break every pytest run"
    assert "pytest_gradhealth/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_sdist_holds_the_package_and_what_its_tests_need(dists):
    with tarfile.open(dists[1]) as sdist:
        names = {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert source_modules() <= names
    needed = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "Makefile", "MANIFEST.in", "tests/conftest.py"}
    needed |= {"examples/conftest.py", "benchmarks/run.py", "docs/plot_models.py", ".ci/run"}
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_and_the_installed_package_are_one_version(dists):
    assert dists[0].name.startswith(f"pytest_gradhealth-{pytest_gradhealth.__version__}-")
    assert importlib.metadata.version("pytest-gradhealth") == pytest_gradhealth.__version__


def test_the_package_under_test_is_the_installed_wheel_when_make_test_runs():
    if "GRADHEALTH_DIST" not in os.environ:
        pytest.skip("the editable loop tests the checkout; make test (CI) tests the installed wheel")
    assert Path(pytest_gradhealth.__file__).is_relative_to(sysconfig.get_path("purelib")), pytest_gradhealth.__file__


def test_the_installed_metadata_declares_the_plugin_the_command_and_the_extras():
    dist = importlib.metadata.distribution("pytest-gradhealth")
    plugins = {e.name: e.value for e in dist.entry_points if e.group == "pytest11"}
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert plugins == {"gradhealth": "pytest_gradhealth.plugin"}
    assert scripts == {"gradhealth": "pytest_gradhealth.cli:main"}
    assert {"plot", "test"} <= set(dist.metadata.get_all("Provides-Extra"))
    requires = dist.requires or []
    assert any(r.startswith("torch") and "<3" in r for r in requires), requires


def test_the_installed_command_probes_saves_and_shows_a_report(tmp_path):
    models = tmp_path / "models.py"
    models.write_text("from pytest_gradhealth import reference\n\ndef rnn():\n    return reference.rnn(8, 16)\n")
    report = tmp_path / "report.json"
    command = SCRIPTS / "gradhealth"
    probed = subprocess.run(
        [command, "probe", f"{models}:rnn", "--seq-len", "20", "--json", str(report)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert report.exists(), probed.stdout + probed.stderr
    shown = subprocess.run([command, "show", str(report)], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "RNN" in shown.stdout and "seq_len=20" in shown.stdout


def test_pytest_loads_the_installed_plugin_and_reports(pytester):
    pytester.makepyfile(
        """
        from pytest_gradhealth import probe, reference

        def test_rnn():
            probe(reference.rnn(8, 16), 20)
        """
    )
    result = pytester.runpytest_subprocess("--gradhealth", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*gradient health*", "gradhealth: 1 probe: 1 vanishing", "*ReferenceRNN*20*vanishing*"]
    )
