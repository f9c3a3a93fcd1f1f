"""The package ships py.typed, so its annotations are a promise: mypy must accept them.

Third-party modules without annotations (TurboGears, PasteDeploy...) are skipped with
--ignore-missing-imports; what they return is Any, so it cannot hide our own errors.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_package_type_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "tgext/asyncjob", "--ignore-missing-imports"],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (
        "mypy found errors (exit %d):\n%s%s" % (result.returncode, result.stdout, result.stderr))
