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
# CI (which sets CI=true, as most CI systems do) needs every Python in PYTHONS; elsewhere a session whose Python is
# missing is skipped with a line saying which, and the others run.
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PYTHONS = ["3.11", "3.12", "3.13"]  # requires-python and the classifiers in pyproject.toml say the same

# What each array library of xdezero's registry (`xdezero.backends.libraries()`, which nox cannot import before
# the package is installed) needs on top of the package and its test extras. tests/test_device_grammar.py checks
# that these names are the registry's.
LIBRARY_PACKAGES = {
    "numpy": [],
    "array_api_strict": [],  # in the test extras
    "torch": ["torch==2.13.0"],  # PyPI's Linux wheel is the CUDA build: torch_cuda installs the same
    "jax": ["jax[cpu]==0.10.2"],  # the version the suite is tested with
    "cupy": [],  # the build matching the driver: _gpu_packages()
    "dask": [],  # in the test extras; its tests run in every session
}
# One session per test backend (tests/conftest.py's ALL_BACKENDS, checked there too): the library it runs.
BACKENDS = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "array_api_strict_device": "array_api_strict",  # its simulated second device: a GPU's rules on the CPU
    "torch": "torch",
    "jax": "jax",
    # The GPU backends, skipped without an NVIDIA GPU.
    "cupy": "cupy",
    "torch_cuda": "torch",
    "jax_gpu": "jax",
}
GPU_BACKENDS = ("cupy", "torch_cuda", "jax_gpu")
# Oracles that the numpy session on the oldest Python installs: PyTorch, against which about 210 tests check NumPy's
# own paths (the stride-1 convolution layout, the buffer pool, np.add.at). The numpy sessions on the other Pythons
# skip just those tests: on Linux, PyPI's torch is a CUDA build of several GB, and one oracle run is enough.
# mypy runs there too, for the test that type-checks a user's script (tests/test_typing.py).
ORACLES = {"numpy": ["torch==2.13.0", "mypy>=1.10"]}


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


def _cuda_major(nvidia_smi_output: str) -> int:
    """The driver's CUDA major version, read from `nvidia-smi`'s header ("CUDA Version: 13.0"): 12 or 13 (for 13
    and later: a driver runs code built for its version or older)."""
    found = re.search(r"CUDA Version:\s*(\d+)\.", nvidia_smi_output)
    if found is None:
        raise ValueError("nvidia-smi does not say which CUDA version the driver supports ('CUDA Version: N.M')")
    major = int(found.group(1))
    if major < 12:
        raise ValueError(f"the NVIDIA driver supports CUDA {major}; their GPU builds need 12 or 13 (update the driver)")
    return min(major, 13)


def _cupy_package(nvidia_smi_output: str) -> str:
    """The CuPy wheel for the driver: cupy-cuda12x or cupy-cuda13x."""
    return f"cupy-cuda{_cuda_major(nvidia_smi_output)}x"


def _gpu_packages(backend: str, nvidia_smi_output: str) -> list[str]:
    """What a GPU backend's session installs: the CuPy or JAX build for the driver's CUDA version."""
    if backend == "cupy":
        return [_cupy_package(nvidia_smi_output)]
    if backend == "jax_gpu":
        return [f"jax[cuda{_cuda_major(nvidia_smi_output)}]==0.10.2"]
    return LIBRARY_PACKAGES[BACKENDS[backend]]


def _test_sessions() -> list:
    sessions = [nox.param(p, "numpy", id=f"python='{p}', backend='numpy'") for p in PYTHONS[1:]]
    # The oldest Python keeps the short names: tests(backend='numpy'), tests(backend='torch'), ...
    return [nox.param(PYTHONS[0], b, id=f"backend='{b}'") for b in BACKENDS] + sessions


@nox.session
@nox.parametrize("python,backend", _test_sessions())
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite with XDEZERO_BACKENDS=<backend>."""
    packages = LIBRARY_PACKAGES[BACKENDS[backend]]
    if backend in GPU_BACKENDS:
        if not _has_nvidia_gpu():
            session.skip(f"no NVIDIA GPU here (nvidia-smi finds none): the {backend} backend needs one")
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=True).stdout
        packages = _gpu_packages(backend, smi)
    if session.python == PYTHONS[0]:
        packages = [*packages, *ORACLES.get(backend, [])]
    session.install("-e", ".[test,plot,progress]", *packages)
    env = {"XDEZERO_BACKENDS": backend}
    if backend == "jax":  # every new shape is an XLA compilation: fewer property-test examples keep it near a minute
        env["XDEZERO_HYPOTHESIS_PROFILE"] = "quick"
    session.run("pytest", *session.posargs, env=env)


@nox.session(python=PYTHONS[0])
def numpy_oldest(session: nox.Session) -> None:
    """The suite on NumPy 1.26, the oldest NumPy that pyproject.toml accepts (its promotion rules differ)."""
    session.install("-e", ".[test,plot,progress]", "numpy==1.26.*")
    session.run("pytest", *session.posargs, env={"XDEZERO_BACKENDS": "numpy"})


@nox.session(python=PYTHONS[0])
def distributed(session: nox.Session) -> None:
    """Data-parallel training: MPI ranks under mpiexec (mpi4py + MPICH from PyPI), dask.distributed workers."""
    session.install("-e", ".[test,mpi]", "distributed")
    session.run(
        "pytest",
        "tests/test_distributed.py",
        "tests/test_distributed_mpi.py",
        "tests/test_distributed_buckets.py",
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


@nox.session(python=PYTHONS[0])
def dezero_chainer(session: nox.Session) -> None:
    """DeZero's own test-suite including its Chainer-oracle tests: set XDEZERO_DEZERO_REPO to a checkout of
    DeZero's repository. Chainer 7.8.1 installs only beside NumPy 1.26, built without build isolation."""
    if not os.environ.get("XDEZERO_DEZERO_REPO"):
        session.skip("XDEZERO_DEZERO_REPO is not set (point it at a checkout of DeZero's repository to run this)")
    session.install("numpy==1.26.*", "setuptools<70", "wheel", "pytest", "array-api-compat")
    session.install("--no-build-isolation", "chainer==7.8.1")
    session.install("--no-deps", "-e", ".")  # keeps NumPy 1.26: xdezero needs only numpy>=1.26 and array-api-compat
    session.run("pytest", "-p", "no:cacheprovider", "tests/test_dezero_suite.py", *session.posargs)
