"""Test every backend in its own environment: `nox` (all sessions), `nox -s "tests(backend='torch')"`, `nox -s lint`.

The numpy session runs on every Python the package claims (`nox -s "tests(python='3.13', backend='numpy')"`),
the other backends on the oldest one.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import nox

nox.options.default_venv_backend = "virtualenv"  # pip honours local wheel folders (torch), uv does not
nox.options.error_on_missing_interpreters = True

PYTHONS = ["3.11", "3.12", "3.13"]  # requires-python and the classifiers in pyproject.toml say the same

# What each backend session installs on top of the package and its test extras.
BACKEND_PACKAGES = {
    "numpy": [],
    "array_api_strict": [],
    "torch": ["torch==2.13.0"],
    "jax": ["jax[cpu]==0.10.2"],  # the version the suite is tested with
    "cupy": [],  # the CuPy build matching the driver, chosen in the session: _cupy_package()
}


def _put_pyenv_pythons_on_path() -> None:
    """pyenv's shims run only the selected versions (`python3.12` fails while 3.11 is global): put each
    installed version's own bin folder first on PATH, so that nox finds every interpreter in PYTHONS."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    folders = []
    for version in PYTHONS:
        found = shutil.which(f"python{version}")
        if found and os.sep + "shims" + os.sep not in found:
            continue
        installed = sorted(
            glob.glob(os.path.join(root, "versions", f"{version}.*", "bin")),
            key=lambda p: [int(x) for x in p.split(os.sep)[-2].split(".") if x.isdigit()],
        )
        if installed:
            folders.append(installed[-1])
    os.environ["PATH"] = os.pathsep.join([*folders, os.environ.get("PATH", "")])


_put_pyenv_pythons_on_path()


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


def _cupy_package(nvidia_smi_output: str) -> str:
    """The CuPy wheel for the driver's CUDA version, read from `nvidia-smi`'s header ("CUDA Version: 13.0"):
    cupy-cuda13x for 13 and later, cupy-cuda12x for 12 (a driver runs code built for its version or older)."""
    found = re.search(r"CUDA Version:\s*(\d+)\.", nvidia_smi_output)
    if found is None:
        raise ValueError("nvidia-smi does not say which CUDA version the driver supports ('CUDA Version: N.M')")
    major = int(found.group(1))
    if major < 12:
        raise ValueError(f"the NVIDIA driver supports CUDA {major}; CuPy wheels need CUDA 12 or 13 (update the driver)")
    return "cupy-cuda12x" if major == 12 else "cupy-cuda13x"


def _test_sessions() -> list:
    sessions = [nox.param(p, "numpy", id=f"python='{p}', backend='numpy'") for p in PYTHONS[1:]]
    # The oldest Python keeps the short names: tests(backend='numpy'), tests(backend='torch'), ...
    return [nox.param(PYTHONS[0], b, id=f"backend='{b}'") for b in BACKEND_PACKAGES] + sessions


@nox.session
@nox.parametrize("python,backend", _test_sessions())
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite with XDEZERO_BACKENDS=<backend>."""
    if backend == "cupy" and not _has_nvidia_gpu():
        session.skip("no NVIDIA GPU here (nvidia-smi finds none): the cupy backend needs one")
    packages = BACKEND_PACKAGES[backend]
    if backend == "cupy":
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=True).stdout
        packages = [_cupy_package(smi)]
    session.install("-e", ".[test,plot,progress]", *packages)
    env = {"XDEZERO_BACKENDS": backend}
    if backend == "jax":  # every new shape is an XLA compilation: fewer property-test examples keep it near a minute
        env["XDEZERO_HYPOTHESIS_PROFILE"] = "quick"
    session.run("pytest", *session.posargs, env=env)


@nox.session(python=PYTHONS[0])
def distributed(session: nox.Session) -> None:
    """Data-parallel training: MPI ranks under mpiexec (mpi4py + MPICH from PyPI), dask.distributed workers."""
    session.install("-e", ".[test,mpi]", "distributed")
    session.run(
        "pytest",
        "tests/test_distributed.py",
        "tests/test_distributed_mpi.py",
        "tests/test_distributed_dask.py",
        *session.posargs,
        env={"XDEZERO_BACKENDS": "numpy"},
    )


@nox.session(python=PYTHONS[0])
def docs(session: nox.Session) -> None:
    """The user guide and the API reference from the docstrings: `mkdocs build --strict` (warnings are errors)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", os.path.join(session.create_tmp(), "site"))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff==0.17.6")  # the version the code is formatted with; a newer one may reformat
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
