"""Gradient buckets all-reduced while backward runs (PyTorch DDP's overlap, ChainerMN's `allreduce_grad_dtype`).

The parameters are grouped into buckets once, in reverse registration order (the last layers first, the order in
which backward finishes them), each bucket holding parameters of one library, dtype and device and about
`bucket_bytes` of them (the first one `first_bucket_bytes`, so that communication starts early). The grouping
depends only on the model, so it is the same on every rank, and every rank starts the buckets' all-reduces in
the same order, which non-blocking collectives require: bucket k starts only after buckets 0 to k-1.

A bucket starts (a non-blocking all-reduce of its packed gradients, with a has-gradient flag per parameter) once
each of its parameters has received as many gradient additions as in the previous step: backward tells it
through `Variable.register_grad_hook`. `finish` (the optimizer's `update`) starts the buckets still waiting,
waits for all, and hands the averaged gradients back. A gradient added after its bucket started (a parameter used
more often than in the previous step, or one that had none) makes that bucket stale: the ranks agree on the
stale buckets in one small all-reduce and reduce them again, so that the result is always today's sequential
all-reduce of the final gradients. A parameter without a gradient on every rank keeps none and does not move.

Packing a bucket (one copy of its gradients into a fresh buffer, which the in-place reduction needs) and starting
its all-reduce run on one thread of the buckets' own, as DDP copies into its buckets on another CUDA stream: NumPy
releases the GIL while it copies, so backward goes on meanwhile. The step thread takes the bucket's gradient
arrays and their counts when the bucket becomes ready, and the thread packs exactly those: backward rebinds
`.grad` to a new array when it adds, never writes into one, so a later addition still makes the bucket stale and
its redo, started after the agreement, packs the final arrays. The thread runs the buckets first in, first out,
so they start in the same order on every rank; once every bucket is handed over, backward waits for the thread to
start them all before it returns, so collectives called after backward come after them on every rank, as without
the thread. Buckets of other libraries than NumPy, and all buckets of transports that cannot start a collective
from another thread (MPI below MPI_THREAD_MULTIPLE, NCCL), pack on the step thread. The thread ends when the
buckets are dropped. Where the transport reduces a NumPy array in place (MPI), a bucket's all-reduce starts in
chunks of CHUNK_BYTES, each as soon as it is packed, so that the link does not wait for the whole copy.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from xdezero._config import recorder_slot
from xdezero.backends import array_namespace, pack, to_numpy, unpack
from xdezero.core import Parameter, Variable
from xdezero.distributed.communicator import Communicator, grads_with_flags, group_key, set_mean_grads

__all__ = ["GradientBuckets"]

MB = 1 << 20
# A bucket of NumPy arrays starts in all-reduces of this size, each as soon as it is packed: the link starts
# after one chunk is copied, not the whole bucket (25.7 MB of one wide layer take 4-6 ms to copy).
CHUNK_BYTES = 4 * MB


class _Bucket:
    """Parameters reduced together, and this step's state: the handle of its all-reduce and what it packed."""

    def __init__(self, params: list[Parameter]) -> None:
        self.params = params
        self.handle: Any = None  # the transport's pending all-reduce, once started
        self.packed: Any = None  # the flat array handed to the transport (its library, dtype and device)
        self.launched_writes: list[int] = []  # each parameter's gradient additions when the bucket started
        self.sending: Future | None = None  # the bucket thread's packing and start, until joined


class GradientBuckets:
    """The buckets of one model's parameters on `comm`; see the module docstring."""

    def __init__(
        self,
        comm: Communicator,
        params: list[Parameter],
        bucket_bytes: int = 25 * MB,
        first_bucket_bytes: int = 1 * MB,
        grad_dtype: Any = None,
    ) -> None:
        self.comm = comm
        self.grad_dtype = grad_dtype  # the exchange dtype's name, or None
        self.params = params
        self.buckets: list[_Bucket] = _split(params, bucket_bytes, first_bucket_bytes)
        self._writes = {id(p): 0 for p in params}
        self._expected = dict.fromkeys(self._writes, -1)  # -1: not seen yet (the first step starts nothing early)
        self._next = 0  # the next bucket to start
        self._finished = 0  # steps reduced: from the second on, buckets may have started early (on any rank)
        # Held weakly by the parameters' hooks, so that dropping the optimizer drops the buckets and their thread.
        on_grad = weakref.WeakMethod(self._on_grad)

        def hook(p: Variable) -> None:
            method = on_grad()
            if method is not None:
                method(p)

        self._removers: list[Callable[[], None]] = [p.register_grad_hook(hook) for p in params]
        weakref.finalize(self, _remove_all, self._removers)
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="xdezero-gradient-buckets") if comm._threaded_starts else None
        )
        self.syncing: bool = True

    def detach(self) -> None:
        """Remove the hooks from the parameters (the buckets then reduce only in `finish`)."""
        _remove_all(self._removers)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside: gradient additions are neither counted nor sent (gradient accumulation, `no_sync`)."""
        before = self.syncing
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = before

    # --- during backward -----------------------------------------------------------------------------------
    def _on_grad(self, p: Variable) -> None:
        if not self.syncing or recorder_slot.get() is not None:
            return  # accumulating (no_sync), or recording a captured step, whose exchange is one op in `finish`
        self._writes[id(p)] += 1
        while self._next < len(self.buckets) and self._ready(self.buckets[self._next]):
            self._start(self.buckets[self._next])
            self._next += 1
            if self._next == len(self.buckets):
                self._join()  # all handed over: backward returns once all started, before the user's collectives

    def _ready(self, bucket: _Bucket) -> bool:
        return all(0 <= self._expected[id(p)] <= self._writes[id(p)] for p in bucket.params)

    def _start(self, bucket: _Bucket) -> None:
        bucket.launched_writes = [self._writes[id(p)] for p in bucket.params]
        arrays = grads_with_flags(bucket.params)  # the arrays counted above, which backward never writes into
        # NumPy copies release the GIL and need no device context; a GPU library packs asynchronously on the step
        # thread's stream already, and its current device and stream are the thread's own.
        if self._thread is not None and isinstance(arrays[0], np.ndarray):
            bucket.sending = self._thread.submit(self._send, bucket, arrays)
        else:
            self._join()  # after the buckets handed over before it, as on every rank
            self._send(bucket, arrays)

    def _send(self, bucket: _Bucket, arrays: list[Any]) -> None:
        if self.comm._numpy_in_place and self.grad_dtype is None and isinstance(arrays[0], np.ndarray):
            bucket.packed = np.empty(sum(a.size for a in arrays), dtype=arrays[0].dtype)
            chunks = _packed_chunks(arrays, bucket.packed, 1 / self.comm.size, CHUNK_BYTES // arrays[0].itemsize)
            bucket.handle = _AllOf([self.comm._iallreduce_buffer(chunk, "sum") for chunk in chunks], bucket.packed)
            return
        bucket.packed = self._pack(arrays)
        bucket.handle = self.comm._iallreduce_buffer(self.comm._to_buffer(bucket.packed), "sum")

    def _join(self) -> None:
        """Wait until the bucket thread has started every bucket handed to it; raise here what failed there."""
        for k, bucket in enumerate(self.buckets):
            sending, bucket.sending = bucket.sending, None
            error = None if sending is None else sending.exception()
            if error is not None:
                nbytes = sum(_nbytes(p.data) for p in bucket.params)
                raise RuntimeError(
                    f"MultiNodeOptimizer: packing or starting the all-reduce of gradient bucket {k} of "
                    f"{len(self.buckets)} ({len(bucket.params)} parameters, {nbytes} bytes) failed on the bucket "
                    f"thread: {type(error).__name__}: {error}"
                ) from error

    def _pack(self, arrays: list[Any]) -> Any:
        if self.grad_dtype is None:
            return pack(arrays, scale=1 / self.comm.size)
        # Summed in the exchange dtype, averaged after, in the parameters' dtype.
        xp = array_namespace(arrays[0])
        return xp.astype(pack(arrays), getattr(xp, self.grad_dtype))

    # --- update ----------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Start the buckets still waiting, wait for every all-reduce, and set each parameter's gradient to its
        mean over the ranks (None where no rank had one); then learn this step's gradient counts."""
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
            self._next += 1
        self._join()
        results = [self.comm._from_buffer(b.handle.wait(), b.packed) for b in self.buckets]
        stale = [int(b.launched_writes != [self._writes[id(p)] for p in b.params]) for b in self.buckets]
        if self._finished:  # buckets may have started early (on some rank): agree on the redos
            agreed = to_numpy(self.comm._allreduce_array(np.asarray(stale, dtype=np.int64), "max"))
            for k, bucket in enumerate(self.buckets):
                if agreed[k]:
                    self._start(bucket)
                    self._join()
                    results[k] = self.comm._from_buffer(bucket.handle.wait(), bucket.packed)
        for bucket, flat in zip(self.buckets, results):
            self._apply(bucket, flat)
            bucket.handle = bucket.packed = None
        if any(self._writes.values()):  # a captured step's exchange counts nothing: the eager steps' counts stay
            self._expected = dict(self._writes)
        self._writes = dict.fromkeys(self._writes, 0)
        self._next = 0
        self._finished += 1

    def _apply(self, bucket: _Bucket, flat: Any) -> None:
        params = bucket.params
        first = params[0].data
        xp = array_namespace(first)
        if self.grad_dtype is not None:
            flat = xp.astype(flat, first.dtype) * (1 / self.comm.size)
        set_mean_grads(params, unpack(flat, [tuple(p.data.shape) for p in params] + [(len(params),)]))


class _AllOf:
    """The all-reduces of a bucket's chunks: `wait()` waits for each and returns the bucket, reduced in place."""

    def __init__(self, handles: list[Any], packed: np.ndarray) -> None:
        self.handles, self.packed = handles, packed

    def wait(self) -> np.ndarray:
        """The reduced bucket."""
        for handle in self.handles:
            handle.wait()
        return self.packed


def _packed_chunks(arrays: list[np.ndarray], out: np.ndarray, scale: float, chunk: int) -> Iterator[np.ndarray]:
    """Copy `arrays` times `scale` into `out`, one after another, yielding each `chunk` elements (the rest last) as
    soon as they are filled."""
    filled = sent = 0
    for a in arrays:
        flat = a.reshape(-1)
        for start in range(0, flat.size, chunk):
            piece = flat[start : start + chunk]
            np.multiply(piece, scale, out=out[filled : filled + piece.size])
            filled += piece.size
            if filled - sent >= chunk:
                yield out[sent:filled]
                sent = filled
    if sent < filled:
        yield out[sent:filled]


def _remove_all(removers: list[Callable[[], None]]) -> None:
    for remove in removers:
        remove()
    removers.clear()


def _nbytes(a: Any) -> int:
    """The bytes of array `a` (an array-API dtype need not say its size: array-api-strict's does not)."""
    xp = array_namespace(a)
    info = xp.finfo if xp.isdtype(a.dtype, "real floating") else xp.iinfo
    return math.prod(a.shape) * info(a.dtype).bits // 8


def _split(params: list[Parameter], bucket_bytes: int, first_bucket_bytes: int) -> list[_Bucket]:
    """Buckets of parameters in reverse order, one library/dtype/device each, closed past their byte budget."""
    buckets: list[_Bucket] = []
    open_buckets: dict[tuple, tuple[_Bucket, int]] = {}  # group -> (its open bucket, bytes in it)
    for p in reversed(params):
        key = group_key(p.data)
        nbytes = _nbytes(p.data)
        current = open_buckets.get(key)
        budget = first_bucket_bytes if current is not None and current[0] is buckets[0] else bucket_bytes
        if current is None or current[1] + nbytes > budget:
            bucket = _Bucket([p])
            buckets.append(bucket)
            open_buckets[key] = (bucket, nbytes)
        else:
            current[0].params.append(p)
            open_buckets[key] = (current[0], current[1] + nbytes)
    return buckets
