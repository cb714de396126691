"""DeZero's own test-suite, run against xdezero through a `dezero` -> `xdezero` alias.

DeZero's tests are not shipped with its wheel, and their code is not ours to copy: point
`XDEZERO_DEZERO_REPO` at a checkout of github.com/oreilly-japan/deep-learning-from-scratch-3 to run them.
Files that import Chainer (their oracle) are left out unless Chainer is installed (`nox -s dezero_chainer`
installs Chainer 7.8.1 beside NumPy 1.26 and runs them). The expected failures, with their reasons, are below.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.dezero_oracle import SUBMODULES

_CONV2D_BITS = (
    "conv2d's float32 forward differs from Chainer's in the last bits (README: DeZero differences); the test "
    "compares with array_equal, and passes only when BLAS happens to round every element alike"
)
EXPECTED_FAILURES = {
    "test_sum.py::TestSumTo::test_backward3": "DeZero's bug: it sums (10, 20, 20) to shape (20,) for (10,); we raise",
    **{f"test_conv2d.py::TestConv2d::test_forward{i}": _CONV2D_BITS for i in (1, 2, 3, 4)},
}
MAY_PASS = {name for name, reason in EXPECTED_FAILURES.items() if reason is _CONV2D_BITS}

ALIAS = f"""
import importlib
import sys

import xdezero

sys.modules["dezero"] = xdezero
for name in {SUBMODULES!r}:
    sys.modules["dezero." + name] = importlib.import_module("xdezero." + name)
"""


def test_dezero_test_suite_passes_on_xdezero(tmp_path):
    repo = os.environ.get("XDEZERO_DEZERO_REPO")
    if not repo:
        pytest.skip("set XDEZERO_DEZERO_REPO to a checkout of DeZero's repository to run its tests")
    files = sorted(pathlib.Path(repo, "tests").glob("test_*.py"))
    assert files, f"no tests/test_*.py under {repo}"
    have_chainer = importlib.util.find_spec("chainer") is not None
    chosen = [f for f in files if have_chainer or "chainer" not in f.read_text()]
    for f in chosen:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "conftest.py").write_text(ALIAS)
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "-o", "addopts=", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    failed = {line.split()[1].rpartition("/")[2] for line in result.stdout.splitlines() if line.startswith("FAILED ")}
    assert "passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    unexpected = failed - EXPECTED_FAILURES.keys()
    assert not unexpected, result.stdout[-5000:]
    now_passing = EXPECTED_FAILURES.keys() - MAY_PASS - failed
    assert not now_passing, f"expected to fail, but passed: {sorted(now_passing)}"
