"""The plugin is cheap for suites that never use it: no torch at import, nothing changed in their runs."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_plugin_imports_neither_torch_nor_numpy():
    code = (
        "import sys, pytest_gradhealth.plugin, pytest_gradhealth; "
        "heavy = [m for m in ('torch', 'numpy', 'tabulate', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_suite_that_never_uses_the_plugin_runs_with_it_and_without_it(pytester):
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    pytester.runpytest_subprocess("-p", "no:gradhealth").assert_outcomes(passed=1)


def test_plugin_is_registered_through_its_entry_point(pytester):
    result = pytester.runpytest_subprocess("--trace-config")
    result.stdout.fnmatch_lines(["*gradhealth*pytest_gradhealth*plugin.py*"])
