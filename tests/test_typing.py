"""What a type checker sees of xdezero from a user's script: precise types where users look, and the README's
editable install followed by the checker (mypy, from the test extra)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
import numpy as np
import xdezero
import xdezero.functions as F
from xdezero import DataLoader, Variable, layers, models, optimizers
from xdezero.datasets import Spiral

model = models.MLP((10, 3))
optimizer = optimizers.SGD(lr=0.1).setup(model)
loader = DataLoader(Spiral(), 30)

def step(x: np.ndarray, t: np.ndarray) -> Variable:
    loss = F.softmax_cross_entropy(model(x), t)
    model.cleargrads()
    loss.backward()
    optimizer.update()
    return loss

captured = xdezero.capture(step)
for x, t in loader:
    reveal_type(model(x))
    reveal_type(layers.Linear(3)(x))
    reveal_type(x)
    reveal_type(captured(x, t))
    break
reveal_type(optimizer)
reveal_type(optimizers.Adam().setup(model))
reveal_type(Variable(np.ones(2)).shape)
reveal_type(F.relu(Variable(np.ones(2))) + 1.0)
reveal_type(captured)
"""


def _mypy(script: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # --follow-imports=silent: the user's script is checked against xdezero's types, xdezero itself is not.
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", "--no-error-summary"]
    return subprocess.run([*command, *extra, str(script)], capture_output=True, text=True, env=env, timeout=600)


def _revealed(output: str) -> list[str]:
    """The revealed types, without the `builtins.` that some mypy versions print."""
    return [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "(.*)"', output)]


@pytest.fixture(scope="module")
def mypy_available() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")


def test_a_users_script_sees_precise_types(tmp_path, mypy_available):
    script = tmp_path / "train.py"
    script.write_text(USER_SCRIPT)
    result = _mypy(script, env=dict(os.environ, MYPYPATH=str(ROOT)))
    assert "error" not in result.stdout, result.stdout
    revealed = _revealed(result.stdout)
    assert revealed[:2] == ["xdezero.core.Variable", "xdezero.core.Variable"], "a layer or model call is a Variable"
    assert revealed[3] == "xdezero.core.Variable", "capture keeps the step's return type"
    assert revealed[4] == "xdezero.optimizers.SGD" and revealed[5] == "xdezero.optimizers.Adam", "setup keeps its type"
    assert revealed[6] == "tuple[int, ...]", "shapes are tuples of ints"
    assert revealed[7] == "xdezero.core.Variable"
    # CapturedStep[[x: ..., t: ...], Variable]: the step's parameters and return type, kept
    captured = r"xdezero\.tapes\.step\.CapturedStep\[\[x: .*, t: .*\], xdezero\.core\.Variable\]"
    assert re.fullmatch(captured, revealed[8]), revealed


def test_the_readmes_editable_install_is_followed_by_a_type_checker(tmp_path, mypy_available):
    """`pip install -e . --config-settings editable_mode=compat` (the README's command) into a fresh environment:
    mypy, run with that environment's Python, finds xdezero and its types."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    # The build backend (setuptools >= 77, from the test extra) comes from this environment, without a download.
    site = next((env_dir / "lib").glob("python3*/site-packages"), env_dir / "Lib" / "site-packages")
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*install, "-e", str(ROOT), "--config-settings", "editable_mode=compat"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "no such option: --python" in result.stderr:
        pytest.skip("this pip is older than 22.3 (no --python)")
    assert result.returncode == 0, result.stderr[-2000:]
    script = tmp_path / "use.py"
    script.write_text("import xdezero\nreveal_type(xdezero.Variable.backward)\n")
    no_path = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    checked = _mypy(script, "--python-executable", str(python), env=no_path)
    assert "Cannot find implementation or library stub" not in checked.stdout, checked.stdout
    assert _revealed(checked.stdout) == [
        "def (self: xdezero.core.Variable, retain_grad: bool =, create_graph: bool =)"
    ], checked.stdout
