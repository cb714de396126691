"""Each library's backend: its native kernels give the portable kernels' results, and ops reach it.

The portable `Backend` (backends/_portable.py, im2col + GEMM and running maxima over window views) is the
oracle here; tests/test_conv.py checks every backend's ops against NumPy formulas and finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
from xdezero import Variable
from xdezero.backends import Backend, backend_named, backend_of_namespace

PORTABLE = Backend()
GEOMETRIES = [  # kernel, stride, pad
    ((3, 3), (1, 1), (1, 1)),
    ((2, 2), (2, 2), (0, 0)),
    ((2, 3), (2, 1), (0, 1)),
    ((3, 3), (2, 2), (1, 1)),
    ((1, 1), (3, 3), (0, 0)),
]


def _library(name):
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch.asarray
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax.numpy.asarray


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_native_kernels_override_the_portable_ones(library):
    _library(library)
    backend = backend_named(library)
    for kernel in ("conv2d", "deconv2d", "conv2d_grad_w", "conv2d_grads", "max_pool", "avg_pool", "avg_pool_grad"):
        assert getattr(type(backend), kernel) is not getattr(Backend, kernel), kernel


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize("kernel, stride, pad", GEOMETRIES)
def test_native_convolutions_equal_the_portable_ones(library, kernel, stride, pad):
    asarray, backend = _library(library), backend_named(library)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 8))
    W = rng.standard_normal((4, 3, *kernel))
    b = rng.standard_normal(4)
    y = PORTABLE.conv2d(x, W, b, stride, pad)
    _close(backend.conv2d(asarray(x), asarray(W), asarray(b), stride, pad), y)
    gy = rng.standard_normal(y.shape)
    gx, gW = PORTABLE.conv2d_grads(x, W, gy, stride, pad)
    got_gx, got_gW = backend.conv2d_grads(asarray(x), asarray(W), asarray(gy), stride, pad)
    _close(got_gx, gx)
    _close(got_gW, gW)
    _close(backend.conv2d_grad_w(asarray(x), asarray(gy), kernel, stride, pad), gW)
    # deconv2d to every output size a stride allows (torch's output padding, JAX's transpose of a larger image)
    for extra in range(stride[0]):
        outsize = ((y.shape[2] - 1) * stride[0] - 2 * pad[0] + kernel[0] + extra, x.shape[3])
        if (outsize[0] + 2 * pad[0] - kernel[0]) // stride[0] + 1 != y.shape[2]:
            continue
        if (outsize[1] + 2 * pad[1] - kernel[1]) // stride[1] + 1 != y.shape[3]:
            continue
        Wd = rng.standard_normal((4, 3, *kernel))
        want = PORTABLE.deconv2d(gy, Wd, b[:3], stride, pad, outsize)
        _close(backend.deconv2d(asarray(gy), asarray(Wd), asarray(b[:3]), stride, pad, outsize), want)


@pytest.mark.parametrize("library", ["torch", "jax"])
@pytest.mark.parametrize("kernel, stride, pad", GEOMETRIES)
def test_native_pooling_equals_the_portable_one_ties_included(library, kernel, stride, pad):
    asarray, backend = _library(library), backend_named(library)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(np.float64)  # many ties: the first maximum wins everywhere
    y, argmax = PORTABLE.max_pool(x, kernel, stride, pad)
    got_y, got_argmax = backend.max_pool(asarray(x), kernel, stride, pad)
    _close(got_y, y)
    gy, t = rng.standard_normal(y.shape), rng.standard_normal(x.shape)
    _close(
        backend.max_pool_grad(got_argmax, asarray(gy), x.shape, kernel, stride, pad),
        PORTABLE.max_pool_grad(argmax, gy, x.shape, kernel, stride, pad),
    )
    _close(
        backend.max_pool_pick(got_argmax, asarray(t), kernel, stride, pad),
        PORTABLE.max_pool_pick(argmax, t, kernel, stride, pad),
    )
    _close(backend.avg_pool(asarray(x), kernel, stride, pad), PORTABLE.avg_pool(x, kernel, stride, pad))
    _close(
        backend.avg_pool_grad(asarray(gy), x.shape, kernel, stride, pad),
        PORTABLE.avg_pool_grad(gy, x.shape, kernel, stride, pad),
    )


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_integer_images_take_the_portable_kernels(library):
    asarray = _library(library)
    x = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
    W = np.ones((2, 1, 3, 3), dtype=x.dtype)
    got = F.conv2d(asarray(x), asarray(W), pad=1).data
    want = F.conv2d(x, W, pad=1).data
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(F.pooling(asarray(x), 2, 2).data), F.pooling(x, 2, 2).data)


def test_an_op_reaches_its_librarys_backend():
    seen = []

    class Probe(F.Function):
        def forward(self, x):
            seen.append(self.backend)
            return x

    Probe()(np.ones(2))
    assert seen[-1] is backend_named("numpy")
    torch = pytest.importorskip("torch")
    Probe()(torch.ones(2))
    assert seen[-1] is backend_named("torch") and seen[-1].name == "torch"
    strict = pytest.importorskip("array_api_strict")
    Probe()(strict.ones(2))
    assert type(seen[-1]) is Backend  # no backend of its own: the portable kernels


def test_a_namespace_of_no_known_library_gets_the_portable_backend():
    import types

    assert type(backend_of_namespace(types.ModuleType("some_new_array_library"))) is Backend


def test_a_torch_tensor_that_requires_grad_is_detached_on_the_way_in():
    torch = pytest.importorskip("torch")
    leaf = torch.ones(2, requires_grad=True)
    x = Variable(leaf)
    y = x * 2 + torch.full((2,), 3.0, requires_grad=True)  # a constant operand too
    assert not x.data.requires_grad and y.data.grad_fn is None and not y.data.requires_grad
    y.backward()
    assert leaf.grad is None and leaf.requires_grad  # torch's own graph is untouched
    np.testing.assert_array_equal(x.grad.data.numpy(), [2.0, 2.0])
    x.data = torch.zeros(2, requires_grad=True)
    assert not x.data.requires_grad
    assert x.data.data_ptr() != leaf.data_ptr()
    # same memory: detaching is not a copy
    z = torch.ones(3, requires_grad=True)
    assert Variable(z).data.data_ptr() == z.data_ptr()
