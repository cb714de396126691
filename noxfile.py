"""Test every backend in its own environment: `nox` (all sessions), `nox -s "tests(backend='torch')"`, `nox -s lint`."""

from __future__ import annotations

import shutil
import subprocess

import nox

nox.options.default_venv_backend = "virtualenv"  # pip honours local wheel folders (torch), uv does not
nox.options.error_on_missing_interpreters = True

# What each backend session installs on top of the package and its test extras.
BACKEND_PACKAGES = {
    "numpy": [],
    "array_api_strict": [],
    "torch": ["torch==2.13.0"],
    "jax": ["jax[cpu]==0.10.2"],  # the version the suite is tested with
    "cupy": ["cupy-cuda12x"],
}


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


@nox.session
@nox.parametrize("backend", list(BACKEND_PACKAGES))
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite with XDEZERO_BACKENDS=<backend>."""
    if backend == "cupy" and not _has_nvidia_gpu():
        session.skip("no NVIDIA GPU here (nvidia-smi finds none): the cupy backend needs one")
    session.install("-e", ".[test,plot]", *BACKEND_PACKAGES[backend])
    session.run("pytest", *session.posargs, env={"XDEZERO_BACKENDS": backend})


@nox.session
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


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
