"""DeZero's cuda helpers on a machine without a usable GPU (the GPU paths run where CuPy sees one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import asarray, library, to_numpy
from xdezero import Variable, cuda
from xdezero.backends import is_cupy_available

no_gpu = pytest.mark.skipif(is_cupy_available(), reason="CuPy sees a GPU here")


def test_import_does_not_import_cupy():
    code = "import sys, xdezero.cuda; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@no_gpu
def test_gpu_enable_is_false_without_a_gpu():
    assert cuda.gpu_enable is False


def test_get_array_module_and_as_numpy(xp):
    a = asarray(xp, np.arange(3.0))
    if library(xp) == "numpy":
        assert cuda.get_array_module(a) is np
    else:
        assert cuda.get_array_module(a) is not np
    assert cuda.get_array_module(Variable(a)) is cuda.get_array_module(a)
    assert cuda.get_array_module(3.0) is np
    for value in (a, Variable(a)):
        out = cuda.as_numpy(value)
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, to_numpy(a))
    assert cuda.as_numpy(2.5) == np.array(2.5)


@no_gpu
def test_as_cupy_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CuPy"):
        cuda.as_cupy(np.zeros(2))
    with pytest.raises(RuntimeError, match="CuPy"):
        cuda.as_cupy(Variable(np.zeros(2)))


@pytest.mark.skipif(not is_cupy_available(), reason="needs CuPy and a GPU")
def test_as_cupy_with_a_gpu():
    import cupy

    assert cuda.gpu_enable is True
    a = cuda.as_cupy(Variable(np.arange(3.0)))
    assert isinstance(a, cupy.ndarray) and cuda.get_array_module(a) is cupy
    np.testing.assert_array_equal(cuda.as_numpy(a), np.arange(3.0))


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute"):
        cuda.no_such_thing  # noqa: B018
