"""`xdezero.capture` keeps the step's signature for a type checker, in each of its three forms, and stays a plain
wrapper at run time (the step's name, docstring and `__wrapped__`)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xdezero import Variable, capture
from xdezero.tapes import CapturedStep

ROOT = Path(__file__).resolve().parents[1]

# Each line marked `# error` must be the only ones mypy reports.
USER_SCRIPT = """
import numpy as np
import xdezero
from xdezero import Variable

def step(x: np.ndarray, t: np.ndarray, *, scale: float = 1.0) -> Variable:
    raise NotImplementedError

plain = xdezero.capture(step)

@xdezero.capture
def bare(x: np.ndarray) -> tuple[Variable, Variable]:
    raise NotImplementedError

@xdezero.capture(cuda_graphs=False)
def configured(x: np.ndarray, n: int = 1) -> dict[str, Variable]:
    raise NotImplementedError

reveal_type(plain(np.ones(2), np.ones(2), scale=2.0))
reveal_type(bare(np.ones(2)))
reveal_type(configured(np.ones(2)))
reveal_type(configured)
plain(np.ones(2))  # error
configured(np.ones(2), "one")  # error
bare(np.ones(2), scale=1.0)  # error
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    script = tmp_path_factory.mktemp("typing") / "steps.py"
    script.write_text(USER_SCRIPT)
    # --follow-imports=silent: the script is checked against xdezero's types, xdezero itself is not.
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", "--no-error-summary"]
    env = dict(os.environ, MYPYPATH=str(ROOT))
    return subprocess.run([*command, str(script)], capture_output=True, text=True, env=env, timeout=600).stdout


def test_each_form_keeps_the_steps_return_type(mypy_output: str) -> None:
    # mypy writes builtins with or without their module, by version
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "(.*)"', mypy_output)]
    assert revealed[:3] == [
        "xdezero.core.Variable",
        "tuple[xdezero.core.Variable, xdezero.core.Variable]",
        "dict[str, xdezero.core.Variable]",
    ], mypy_output
    assert revealed[3].startswith("xdezero.tapes.step.CapturedStep[[x: "), mypy_output
    assert "n: int =" in revealed[3] and revealed[3].endswith("dict[str, xdezero.core.Variable]]"), mypy_output


def test_a_call_that_does_not_fit_the_steps_signature_is_an_error(mypy_output: str) -> None:
    expected = [k for k, line in enumerate(USER_SCRIPT.splitlines(), 1) if line.endswith("# error")]
    reported = sorted({int(n) for n in re.findall(r"steps\.py:(\d+): error:", mypy_output)})
    assert reported == expected, mypy_output


def test_capture_stays_a_wrapper_in_every_form() -> None:
    def step(x: np.ndarray) -> Variable:
        """The step's own docstring."""
        return Variable(x) * 2.0

    for captured in (capture(step), capture()(step), capture(cuda_graphs=False)(step)):
        assert isinstance(captured, CapturedStep)
        assert captured.__wrapped__ is step
        assert (captured.__name__, captured.__doc__) == ("step", "The step's own docstring.")
        assert captured.fn is step
        np.testing.assert_array_equal(captured(np.ones(2)).data, [2.0, 2.0])
    assert capture(cuda_graphs=False)(step).cuda_graphs is False
    assert capture(step).cuda_graphs is True
