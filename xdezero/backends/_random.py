"""Random numbers on any backend: absent from the array API standard.

The portable way draws on the host with a `numpy.random.Generator` and moves the result with
`xp.asarray(..., device=...)`. A library whose backend has a generator of its own (CuPy, torch, JAX:
`Backend.stream_key`, `new_generator`, `draw_uniform`) gets one per device, so that the numbers are made on the
array's device; those generators are created lazily from the seed, and only for a library whose array was passed
in (so a library the user did not import is never imported).
NumPy's global random state is touched only by `seed`, which seeds it too.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

from xdezero.backends._backends import backend_named, backend_of
from xdezero.backends._namespace import array_namespace, device_of

_lock = threading.Lock()
_seed: int | None = None
_host: np.random.Generator = np.random.default_rng()
_per_device: dict[tuple[str, str], Any] = {}  # (library, device) -> that library's generator state
_draws = threading.local()  # how many times `uniform` drew on this thread (a CUDA-graph capture must not)


def draws() -> int:
    """How many draws `uniform` has made on this thread (a CUDA-graph capturer compares two readings)."""
    return getattr(_draws, "count", 0)


def seed(n: int | None) -> None:
    """Seed every random stream a program draws from: xdezero's own (one per library and device, derived from `n`)
    and NumPy's global generator (`np.random.seed(n)`, which DeZero's order of draws uses), as `torch.manual_seed`
    seeds everything of torch's. None: fresh entropy. `n` in [0, 2**32 - 1], the seeds NumPy's generator takes."""
    global _seed, _host
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 <= n < 2**32):
        raise ValueError(f"seed: expected an integer from 0 to 2**32 - 1 (4294967295) or None, got {n!r}")
    np.random.seed(None if n is None else int(n))
    with _lock:
        _seed = None if n is None else int(n)
        _host = np.random.default_rng(_seed)
        _per_device.clear()


def _child_seed(key: tuple[str, str]) -> int:
    """A seed for one library/device stream, derived from the global seed so that runs repeat."""
    if _seed is None:
        return int(_host.integers(2**62))
    return int(np.random.default_rng([_seed, *(ord(c) for c in "/".join(key))]).integers(2**62))


def uniform(shape: tuple[int, ...], like: Any, dtype: Any = None) -> Any:
    """Uniform [0, 1) samples of `shape`, as an array of `like`'s library and device (dtype: `like`'s dtype)."""
    shape = tuple(int(s) for s in shape)
    dtype = like.dtype if dtype is None else dtype
    xp = array_namespace(like)
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"uniform: dtype must be a real floating dtype, got {dtype}")
    _draws.count = getattr(_draws, "count", 0) + 1
    backend = backend_of(like)
    with _lock:
        key = backend.stream_key(like, dtype)
        if key is not None:
            generator = _per_device.get(key)
            if generator is None:
                generator = backend.new_generator(like, _child_seed(key))
            _per_device[key], sample = backend.draw_uniform(generator, shape, like, dtype)
            return sample
        sample = _host.random(shape, dtype=np.float64)
    if isinstance(like, np.ndarray):
        return sample.astype(dtype, copy=False)
    return xp.astype(xp.asarray(sample, device=device_of(like)), dtype)


# --- the streams' state, for checkpoints -----------------------------------------------------------------


def streams() -> dict[tuple[str, str], Any]:
    """The generators as they are now (immutable ones, such as JAX's keys, are a snapshot): for `restore_streams`
    after a trace that drew, where reading their state would be an operation of the trace."""
    with _lock:
        return dict(_per_device)


def restore_streams(saved: dict[tuple[str, str], Any]) -> None:
    """The generators back to what `streams` returned."""
    with _lock:
        _per_device.clear()
        _per_device.update(saved)


def random_state() -> dict[str, Any]:
    """Every xdezero stream's state: the seed, the host generator, and each library's generator made so far
    (plain numbers and NumPy arrays). CuPy's generators keep their state on the device with no way to read it:
    they are left out, and start again from the seed after `set_random_state`."""
    with _lock:
        streams: dict[str, Any] = {}
        for (library, device), generator in _per_device.items():
            state = backend_named(library).generator_state(generator)
            if state is not None:
                streams[f"{library}/{device}"] = state
        return {"seed": _seed, "host": _host.bit_generator.state, "streams": streams}


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what `random_state` returned; a stream it does not hold starts again from the seed."""
    global _seed, _host
    host = np.random.default_rng()
    try:
        host.bit_generator.state = state["host"]
        seed_value = state["seed"]
        streams = dict(state["streams"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"set_random_state: not a state that random_state returned ({type(e).__name__}: {e})") from e
    restored = {}
    for key, value in streams.items():
        library, _, device = key.partition("/")
        if library in sys.modules:  # a library not imported has drawn nothing here yet: it starts from the seed
            restored[library, device] = backend_named(library).generator_from_state(np.asarray(value), device)
    with _lock:
        _seed = None if seed_value is None else int(seed_value)
        _host = host
        _per_device.clear()
        _per_device.update(restored)
