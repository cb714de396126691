"""backends.pack / unpack: the flat buffers of the collectives."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import asarray, to_numpy
from xdezero.backends import pack, unpack

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]


def _arrays(xp):
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    return host, [asarray(xp, h) for h in host]


@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 3])
def test_pack_is_the_scaled_concatenation(xp, scale):
    host, arrays = _arrays(xp)
    flat = pack(arrays, scale=scale)
    expected = np.concatenate([h.reshape(-1) for h in host]) * np.float32(scale)
    assert flat.shape == (expected.size,) and flat.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(flat), expected, rtol=1e-6)


def test_pack_is_fresh_and_unpack_gives_its_views_back(xp):
    host, arrays = _arrays(xp)
    flat = pack(arrays)
    parts = unpack(flat, SHAPES)
    for h, part in zip(host, parts):
        assert tuple(part.shape) == h.shape
        np.testing.assert_array_equal(to_numpy(part), h)
    np.testing.assert_array_equal(to_numpy(arrays[0]), host[0])  # the inputs are copied, not shared


def test_numpy_pack_scales_in_the_copy_without_touching_the_inputs():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.ones(2, dtype=np.float64)
    flat = pack([a, b], scale=0.5)
    np.testing.assert_array_equal(flat, [0, 0.5, 1, 1.5, 2, 2.5, 0.5, 0.5])
    flat[0] = 99.0
    assert a[0, 0] == 0.0 and not np.shares_memory(flat, a)
