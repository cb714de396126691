"""One registry of array libraries, and one device grammar for all of them.

The same device string names the same device in `to_library`, `to_device`, `Variable.to_device`,
`Layer.to_device`, `DataLoader.to_device` and the command (`xdezero train --backend B --device D`); a device that
does not exist is a ValueError naming it and the devices that do. The registry's names are the command's
`--backend` choices, noxfile's libraries and the libraries of conftest's test backends.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ALL_BACKENDS, BACKEND_DEVICES
from xdezero import DataLoader, Variable, cli
from xdezero import layers as L
from xdezero.backends import (
    Library,
    describe_library,
    device_of,
    libraries,
    library,
    library_of,
    parse_device,
    to_device,
    to_library,
)
from xdezero.backends._registry import Gpus

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("numpy", "array_api_strict", "torch", "jax", "cupy", "dask")
CPU_LIBRARIES = ("numpy", "array_api_strict", "torch", "jax", "dask")
MODULE = {"numpy": "numpy", "array_api_strict": "array_api_strict", "torch": "torch", "jax": "jax", "dask": "dask"}


def usable(name: str) -> Library:
    pytest.importorskip(MODULE[name])
    return library(name)


def some_array(name: str):
    return to_library(np.arange(6.0).reshape(2, 3), name)


# --- the registry ---------------------------------------------------------------------------------------------


def test_the_registry_names_every_library_once():
    assert tuple(row.name for row in libraries()) == NAMES
    for row in libraries():
        assert library(row.name) is row
        assert row.threads is not None or row.no_threads, f"{row.name}: neither a thread setting nor why not"


def test_an_unknown_library_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown array library 'tensorflow'; known: numpy, array_api_strict, torch"):
        library("tensorflow")


def test_the_command_noxfile_and_conftest_read_the_same_libraries():
    assert cli.BACKENDS == NAMES
    for name in NAMES:  # --backend takes each (reading the arguments imports nothing)
        assert cli._parser().parse_args(["train", "spiral", "--backend", name]).backend == name
    tables = {}
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("LIBRARY_PACKAGES", "BACKENDS"):
                tables[node.targets[0].id] = ast.literal_eval(node.value)
    assert tuple(tables["LIBRARY_PACKAGES"]) == NAMES
    assert tuple(tables["BACKENDS"]) == ALL_BACKENDS  # one nox session per test backend
    assert tables["BACKENDS"] == {name: lib for name, (lib, _) in BACKEND_DEVICES.items()}
    assert set(tables["BACKENDS"].values()) <= set(NAMES)


def test_asking_about_libraries_imports_none_of_them():
    code = textwrap.dedent(
        """
        import sys, numpy as np
        from xdezero.backends import libraries, library, library_of, parse_device
        rows = [library(row.name) for row in libraries()]
        assert library_of(np.ones(1)).name == "numpy" and parse_device("cuda:1") == ("gpu", 1)
        print(sorted(m for m in ("cupy", "torch", "jax", "dask", "array_api_strict") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", CPU_LIBRARIES)
def test_library_of_an_array(name):
    usable(name)
    assert library_of(some_array(name)) is library(name)


def test_library_of_a_non_array_names_the_known_libraries():
    with pytest.raises(TypeError, match=r"builtins.int is not an array of a known library \(numpy, array_api_strict"):
        library_of(3)


@pytest.mark.parametrize("name", NAMES)
def test_describe_library_says_something_and_never_raises(name):
    line = describe_library(name)
    assert re.match(r"not installed$|\S+, usable|(\S+, )?installed but unusable \(", line), line


# --- the grammar ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("cpu", ("cpu", None)),
        ("cpu:0", ("cpu", 0)),
        ("cpu:12", ("cpu", 12)),
        ("gpu", ("gpu", None)),
        ("gpu:1", ("gpu", 1)),
        ("cuda", ("gpu", None)),
        ("cuda:1", ("gpu", 1)),
        ("cuda:x", None),
        ("cuda:-1", None),
        ("cpu:01", None),
        ("tpu", None),
        ("device1", None),
        ("CPU", None),
    ],
)
def test_parse_device(text, parsed):
    assert parse_device(text) == parsed


def moved_by_every_caller(name: str, text: str) -> dict[str, object]:
    """The device each caller puts an array of library `name` on, asked for device `text`."""
    x = some_array(name)
    layer = L.Linear(2, in_size=3).to_library(name)
    loader = DataLoader([(np.ones(2), 0), (np.zeros(2), 1)], 2, shuffle=False)
    loader.to_device(text, library=name)
    convert, _ = cli._converter(name, text)
    return {
        "to_library": device_of(to_library(np.ones(3), name, text)),
        "to_device": device_of(to_device(x, text)),
        "Variable.to_device": device_of(Variable(x).to_device(text).data),
        "Layer.to_device": device_of(layer.to_device(text).W.data),
        "DataLoader.to_device": device_of(next(iter(loader))[0]),
        "command": device_of(convert(np.ones(3))),
    }


CPU_CASES = [(name, text) for name in CPU_LIBRARIES for text in ("cpu", "cpu:0")]


@pytest.mark.parametrize(("name", "text"), CPU_CASES)
def test_one_string_one_device_everywhere(name, text):
    expected = usable(name).find(text, where="test").device
    assert moved_by_every_caller(name, text) == dict.fromkeys(
        ["to_library", "to_device", "Variable.to_device", "Layer.to_device", "DataLoader.to_device", "command"],
        expected,
    )


@pytest.mark.parametrize("name", CPU_LIBRARIES)
def test_the_command_names_the_device_it_runs_on(name):
    usable(name)
    assert cli._converter(name, "cpu:0")[1] == cli._converter(name, "cpu")[1] == "cpu"
    assert cli._converter(name, None)[1] == ""


def test_array_api_strict_device_names_in_text_are_its_device_objects():
    strict = pytest.importorskip("array_api_strict")
    for name in ("device1", "device2"):
        convert, shown = cli._converter("array_api_strict", name)
        assert shown == name
        assert device_of(convert(np.ones(2))) == strict.Device(name)
        assert device_of(to_library(np.ones(2), "array_api_strict", strict.Device(name))) == strict.Device(name)


def test_a_device_of_another_library_is_refused():
    strict = pytest.importorskip("array_api_strict")
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"to_library: .*Device\('device1'\) is a device of array-api-strict, not"):
        to_library(np.ones(2), "torch", strict.Device("device1"))


# --- devices that do not exist ----------------------------------------------------------------------------------

MISSING = ("cpu:7", "gpu:0", "cuda:1", "tpu", "cuda:x")


def sees_a_gpu(name: str, text: str) -> bool:
    """Whether `text` names a GPU that library `name` (for to_device of NumPy arrays: CuPy) has here."""
    spec = parse_device(text)
    return spec is not None and spec[0] == "gpu" and bool(library(name).gpu_probe().devices)


@pytest.mark.parametrize("text", MISSING)
@pytest.mark.parametrize("name", CPU_LIBRARIES)
def test_a_missing_device_is_an_error_naming_it_and_the_devices_there(name, text):
    row = usable(name)
    if sees_a_gpu(name, text):
        pytest.skip(f"{name} has a GPU here")
    listing = rf"{re.escape(row.label)}'s devices are cpu"
    named = rf"has no device '{re.escape(text)}'"
    with pytest.raises(ValueError, match=rf"^to_library: library '{name}' {named}.*; {listing}"):
        to_library(np.ones(2), name, text)
    with pytest.raises(cli.UsageError, match=rf"^--device {re.escape(text)}: backend {name} {named}.*; {listing}"):
        cli._converter(name, text)  # the command's errors: one line, exit status 2
    loader = DataLoader([(np.ones(2), 0)], 1)
    said = rf"to_library: library '{name}' {named}"
    with pytest.raises(ValueError, match=said):
        loader.to_device(text, library=name)
    assert loader.device is None
    x = some_array(name)
    if name == "numpy" and (parse_device(text) or ("",))[0] == "gpu":  # DeZero's: a NumPy array's GPUs are CuPy's
        if sees_a_gpu("cupy", text):
            pytest.skip("CuPy has a GPU here")
        named, listing = rf"library 'cupy' {named}", "CuPy"
    for move in (lambda: to_device(x, text), lambda: Variable(x).to_device(text)):
        with pytest.raises(ValueError, match=rf"^to_device.*{named}.*; {listing}"):
            move()
    with pytest.raises(ValueError, match=rf"Linear.to_device: cannot move parameter '[Wb]': to_device.*{named}"):
        L.Linear(2, in_size=3).to_library(name).to_device(text)


def test_a_malformed_device_says_what_the_grammar_is():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"'cuda:x': not a torch device \(the device strings are cpu, cpu:N, gpu, "):
        to_library(np.ones(2), "torch", "cuda:x")


def test_the_command_exits_2_naming_the_missing_device(capsys):
    assert cli.main(["train", "spiral", "--epochs", "1", "--device", "cpu:7"]) == 2
    err = capsys.readouterr().err
    assert err == "xdezero: error: --device cpu:7: backend numpy has no device 'cpu:7'; NumPy's devices are cpu\n"


# --- JAX with two host devices (XLA_FLAGS must be set before JAX is imported: a process of its own) -----------

TWO_CPUS = """
import json, numpy as np
import jax
from xdezero import DataLoader, Variable, cli, layers as L
from xdezero.backends import device_of, to_device, to_library
ids = lambda a: device_of(a).id
x = to_library(np.ones(3), "jax")
loader = DataLoader([(np.ones(2), 0)], 1)
loader.to_device("cpu:1", library="jax")
convert, shown = cli._converter("jax", "cpu:1")
try:
    to_library(x, "jax", "cpu:7")
    missing = None
except ValueError as e:
    missing = str(e)
print(json.dumps({
    "devices": [d.id for d in jax.devices("cpu")],
    "to_library": ids(to_library(np.ones(3), "jax", "cpu:1")),
    "to_device": ids(to_device(x, "cpu:1")),
    "back": [ids(to_device(to_device(x, "cpu:1"), t)) for t in ("cpu", "cpu:0")],
    "Variable": ids(Variable(x).to_device("cpu:1").data),
    "Layer": ids(L.Linear(2, in_size=3).to_library("jax").to_device("cpu:1").W.data),
    "DataLoader": ids(next(iter(loader))[0]),
    "command": [ids(convert(np.ones(3))), shown],
    "missing": missing,
}))
"""


def test_jax_cpu_1_is_the_second_host_device_everywhere():
    pytest.importorskip("jax")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", TWO_CPUS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    first, second = seen["devices"]
    assert [seen[k] for k in ("to_library", "to_device", "Variable", "Layer", "DataLoader")] == [second] * 5
    assert seen["back"] == [first, first]
    assert seen["command"] == [second, "cpu:1"]
    assert seen["missing"] == "to_library: library 'jax' has no device 'cpu:7'; JAX's devices are cpu:0 and cpu:1"


def test_the_command_trains_jax_on_its_second_host_device():
    pytest.importorskip("jax")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "xdezero", "train", "spiral", "--epochs", "1", "--backend", "jax"]
    out = subprocess.run(
        [*command, "--device", "cpu:1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0].endswith("backend jax on cpu:1")


# --- a new library is one row: the grammar, the GPU per rank and the command's converter follow ---------------


def fake_library(used: list) -> Library:
    return Library(
        name="fake",
        label="Fake",
        module="numpy",
        array_modules=(),
        namespace="array_api_compat.numpy",
        host_devices=lambda: ["host"],
        gpus=lambda: Gpus(["g0", "g1", "g2"], 0, "sees 3 GPUs"),
        use_gpu=used.append,
        no_threads="it is a test double",
        from_numpy=lambda xp, a, device, copy: (device, a),
    )


def test_a_new_row_speaks_the_grammar():
    row = fake_library([])
    assert [row.find(t, where="t").device for t in ("cpu", "cpu:0", "gpu", "gpu:2", "cuda:1")] == [
        "host", "host", "g0", "g2", "g1"
    ]  # fmt: skip
    assert row.find("cuda:2", where="t") == row.find("gpu:2", where="t") == ("gpu:2", "g2", 2)
    with pytest.raises(ValueError, match=r"^t: library 'fake' has no device 'gpu:3'; Fake's devices are cpu, gpu:0, "
                                         r"gpu:1 and gpu:2 \(Fake sees 3 GPUs\)$"):  # fmt: skip
        row.find("gpu:3", where="t")


def test_gpu_of_rank_and_the_converter_read_the_row(monkeypatch):
    used: list = []
    row = fake_library(used)
    monkeypatch.setattr(cli, "library", lambda name: row)
    monkeypatch.setattr(cli, "library_converter", lambda name: lambda a: a)
    cli._use_gpu_of_rank("fake", 4)
    assert used == [1]  # rank 4 of a node with 3 GPUs
    convert, shown = cli._converter("fake", "cuda:2")
    assert shown == "gpu:2" and used == [1, 2] and convert("a") == ("g2", "a")


@pytest.mark.parametrize("name", [row.name for row in libraries() if row.threads is None])
def test_threads_of_a_library_that_takes_none_are_refused_with_its_reason(name):
    row = library(name)
    if not row.installed():
        pytest.skip(f"{name} is not installed")
    with pytest.raises(cli.UsageError, match=rf"backend {name} takes none \({re.escape(row.no_threads)}\)"):
        cli._set_threads(name, 2, given=True)
    cli._set_threads(name, 2, given=False)()  # the task's default: quietly nothing
