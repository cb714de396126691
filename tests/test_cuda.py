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


needs_cupy = pytest.mark.skipif(not is_cupy_available(), reason="needs CuPy and a GPU")
GEOMETRIES = [  # (x shape, kernel, stride, pad)
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)),
    ((1, 2, 9, 8), (3, 2), (2, 3), (1, 0)),
    ((3, 1, 5, 5), (5, 5), (1, 1), (2, 2)),
    ((2, 4, 6, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 1, 4, 4), (1, 1), (1, 1), (0, 0)),
]


@needs_cupy
@pytest.mark.parametrize(("shape", "kernel", "stride", "pad"), GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cupy_im2col_and_col2im_kernels_equal_the_numpy_code(shape, kernel, stride, pad, dtype):
    import cupy

    from xdezero.backends import col2im_matrix, im2col_matrix

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    expected = im2col_matrix(x, kernel, stride, pad)
    got = im2col_matrix(cupy.asarray(x.transpose(1, 0, 2, 3).copy()).transpose(1, 0, 2, 3), kernel, stride, pad)
    np.testing.assert_array_equal(cupy.asnumpy(got), expected)  # a copy of the same numbers
    col = rng.standard_normal(expected.shape).astype(dtype)
    np.testing.assert_allclose(
        cupy.asnumpy(col2im_matrix(cupy.asarray(col), shape, kernel, stride, pad)),
        col2im_matrix(col, shape, kernel, stride, pad),
        rtol=1e-6 if dtype == np.float32 else 1e-13,
    )


@needs_cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "k", "n"), [(5, 7, 3), (1, 4, 6), (6, 4, 1), (3, 1, 2), (0, 3, 2), (2, 0, 3)])
def test_the_cublas_product_used_in_cupy_graphs_equals_cupy_matmul(dtype, m, k, n):
    import cupy

    from xdezero.backends import _cublas

    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    for a_gpu in (cupy.asarray(a), cupy.asfortranarray(cupy.asarray(a)), cupy.asarray(a.T.copy()).T):
        for b_gpu in (
            cupy.asarray(b),
            cupy.asfortranarray(cupy.asarray(b)),
            cupy.asarray(np.pad(b, ((0, 0), (0, 2))))[:, :n],
        ):
            got = _cublas.cupy_gemm(a_gpu, b_gpu)
            np.testing.assert_allclose(cupy.asnumpy(got), a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
