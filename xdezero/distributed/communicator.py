"""The transport-independent half of a communicator: packing, reductions of any value, model-level collectives.

A transport (MPI, NCCL, torch.distributed, or none) supplies five primitives on its own buffer type: move a
flat array into a buffer and back, all-reduce a buffer, broadcast a buffer, and broadcast a small picklable
object. Everything else is written once here, on array-API arrays:

- gradients and parameters travel packed: one flat buffer per (library, dtype, device) group, so a model costs
  one collective per dtype, never one per parameter, and nothing is pickled;
- a packed buffer is always freshly allocated (`pack` copies), so reducing it in place never writes into an
  array the caller owns, and the arrays handed back (`p.grad`, `p.data`) are disjoint views of it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from xdezero.backends import array_namespace, device_of, is_array, pack, to_numpy, unpack
from xdezero.core import Function, Parameter, Variable
from xdezero.layers import BatchNorm, Layer

__all__ = ["Communicator", "ReduceOp", "host_buffer", "named_params"]

ReduceOp = Literal["sum", "mean", "max", "min"]
_OPS = ("sum", "mean", "max", "min")


def _check_op(where: str, op: str) -> str:
    if op not in _OPS:
        raise ValueError(f"{where}: op must be one of {', '.join(map(repr, _OPS))}, got {op!r}")
    return op


def group_key(a: Any) -> tuple[type, str, str]:
    """Arrays that one flat buffer can hold: (library type, dtype, device)."""
    # Arrays share a buffer only when one concat can join them: same library, dtype and device.
    return (type(a), str(a.dtype), str(device_of(a)))


def host_buffer(flat: Any) -> np.ndarray:
    """The fresh array `flat` as a writable, contiguous NumPy array: shared when it already is one (NumPy, torch
    on the CPU), copied otherwise (a GPU array, or the read-only host view of a JAX array)."""
    buf = to_numpy(flat)
    return buf if buf.flags.writeable and buf.flags.c_contiguous else np.array(buf)


def _is_floating(a: Any) -> bool:
    return array_namespace(a).isdtype(a.dtype, "real floating")


class _AllReduce(Function):
    """y = Σ_r x_r (or the mean); gx = the same reduction of gy, since every rank's loss depends on y."""

    keeps_inputs = False

    def __init__(self, comm: Communicator, op: str) -> None:
        self.comm, self.op = comm, op

    def forward(self, x: Any) -> Any:
        return self.comm._allreduce_array(x, self.op)

    def backward(self, gy: Variable) -> Variable:
        return _AllReduce(self.comm, self.op)(gy)


class Done:
    """The handle of a collective that has completed: `wait()` returns its result."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def wait(self) -> Any:
        """The result."""
        return self.result


class Communicator:
    """A group of `size` processes, this one being `rank`; `intra_rank`/`intra_size` count the processes on this
    node (use `intra_rank` to pick a GPU), `inter_rank`/`inter_size` the nodes.

    Every collective (`allreduce`, `bcast_data`, `allreduce_grad`, `barrier`, ...) must be called by every rank,
    in the same order and with arrays of the same shapes and dtypes, as with MPI itself.
    """

    name = "base"
    rank: int = 0
    size: int = 1
    intra_rank: int = 0
    intra_size: int = 1
    inter_rank: int = 0
    inter_size: int = 1
    # Whether another thread may call `_iallreduce_buffer` while this one calls collectives (MPI_THREAD_MULTIPLE);
    # the gradient buckets then pack and start on a thread of their own.
    _threaded_starts: bool = False
    # Whether a NumPy array serves as its own buffer (`_iallreduce_buffer` takes it and reduces into it): the
    # gradient buckets then start theirs in chunks, each as soon as it is packed.
    _numpy_in_place: bool = False

    # --- transport primitives (each transport implements these) --------------------------------------
    def _to_buffer(self, flat: Any) -> Any:
        """`flat` (a fresh 1-d array that nobody else holds) as this transport's buffer; may share memory."""
        raise NotImplementedError

    def _from_buffer(self, buf: Any, like: Any) -> Any:
        """The buffer as an array of `like`'s library and device."""
        raise NotImplementedError

    def _allreduce_buffer(self, buf: Any, op: str) -> Any:
        """Reduce `buf` over all ranks with op 'sum', 'max', 'min', or 'mean' (floating buffers only), in place
        allowed (the buffer is ours); return the result."""
        raise NotImplementedError

    def _bcast_buffer(self, buf: Any, root: int) -> Any:
        """Rank `root`'s `buf` on every rank (in place allowed); return it."""
        raise NotImplementedError

    def _iallreduce_buffer(self, buf: Any, op: str) -> Any:
        """Start reducing `buf` over all ranks (as `_allreduce_buffer`) and return a handle whose `wait()` returns
        the result. Transports without non-blocking collectives reduce now (this default)."""
        return Done(self._allreduce_buffer(buf, op))

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s `obj` on every rank (pickled: for small metadata, never for arrays in a training loop)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return once every rank has called `barrier`."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (what an uncaught exception on one rank does)."""
        raise NotImplementedError

    # --- values of any kind ----------------------------------------------------------------------------
    def allreduce(self, x: Any, op: ReduceOp = "sum") -> Any:
        """`x` reduced over all ranks with `op` ('sum', 'mean', 'max' or 'min'), of the same kind as `x`.

        `x` may be an array of any library (the result has its library, device and shape), a Variable (sum and
        mean are differentiable: the gradient is the same reduction of the output gradient, so `backward` must
        then run on every rank), a Python or NumPy number (a Python number comes back; the mean is a float), or
        a mapping of names to numbers (one collective for all of them; floats come back).
        """
        _check_op("allreduce", op)
        if isinstance(x, Variable):
            if op in ("sum", "mean"):
                return _AllReduce(self, op)(x)
            return Variable(self._allreduce_array(x.data, op))
        if isinstance(x, Mapping):
            keys = list(x)
            values = np.asarray([_scalar(x[k], f"allreduce: value {k!r}") for k in keys], dtype=np.float64)
            reduced = self._allreduce_array(values, op) if keys else values
            return {k: float(v) for k, v in zip(keys, reduced)}
        if isinstance(x, numbers.Number) and not is_array(x):
            integral = isinstance(x, numbers.Integral) and op != "mean"
            value = np.asarray([x], dtype=np.int64 if integral else np.float64)
            reduced = self._allreduce_array(value, op)[0]
            return int(reduced) if integral else float(reduced)
        if is_array(x):
            return self._allreduce_array(x, op)
        raise TypeError(
            f"allreduce: expected an array, a Variable, a number or a mapping of names to numbers, "
            f"got {type(x).__name__}"
        )

    def _allreduce_array(self, a: Any, op: str) -> Any:
        xp = array_namespace(a)
        shape = tuple(a.shape)
        flat = pack([a])
        if op == "mean" and not _is_floating(flat):
            flat = xp.astype(flat, xp.float64)
        out = self._from_buffer(self._allreduce_buffer(self._to_buffer(flat), op), flat)
        return xp.reshape(out, shape)

    def bcast(self, x: Any, root: int = 0) -> Any:
        """Rank `root`'s array `x` on every rank; the other ranks pass an array of the same shape and dtype."""
        if not is_array(x):
            raise TypeError(f"bcast: expected an array (use bcast_obj for other objects), got {type(x).__name__}")
        flat = pack([x])
        return array_namespace(x).reshape(
            self._from_buffer(self._bcast_buffer(self._to_buffer(flat), root), flat), x.shape
        )

    # --- models ----------------------------------------------------------------------------------------
    def bcast_data(self, model: Any, root: int = 0) -> None:
        """Give every parameter of `model` rank `root`'s value (one broadcast per dtype).

        Parameters without data yet (shapes taken from the first input) are skipped; the multi-node optimizer
        broadcasts them once the first forward pass has created them.
        """
        self.bcast_params([(k, p) for k, p in named_params(model, "bcast_data") if p.data is not None], root)

    def bcast_params(self, named: Sequence[tuple[str, Parameter]], root: int = 0) -> None:
        """Give the `(name, Parameter)` pairs (all with data) rank `root`'s values; the names only serve the
        check that every rank passes the same parameters."""
        named = list(named)
        if self.size == 1:
            return
        self._check_same_layout("bcast_data", named, root)
        for indices in _grouped(p.data for _, p in named).values():
            arrays = [named[i][1].data for i in indices]
            flat = pack(arrays)
            out = self._from_buffer(self._bcast_buffer(self._to_buffer(flat), root), flat)
            if self.rank != root:
                for i, view in zip(indices, unpack(out, [tuple(a.shape) for a in arrays])):
                    named[i][1].data = view

    def _check_same_layout(self, where: str, named: list[tuple[str, Parameter]], root: int) -> None:
        """Raise the same error on every rank when the parameters differ from `root`'s in names, shapes or dtypes
        (a mismatch would otherwise corrupt or hang the collective)."""
        mine = [(k, tuple(p.data.shape), str(p.data.dtype)) for k, p in named]
        theirs = self.bcast_obj(mine, root)
        if self.allreduce(int(mine != theirs), "max"):
            diff = next((f"{a} here, {b} on rank {root}" for a, b in zip(mine, theirs) if a != b), None)
            raise ValueError(
                f"{where}: the model's parameters differ between ranks (name, shape, dtype): "
                f"{diff or f'{len(mine)} parameters here, {len(theirs)} on rank {root}'}; "
                "every rank must build the same model, and lazily shaped layers must have seen inputs of the same shape"
            )

    def allreduce_grad(self, model: Any) -> None:
        """Replace every gradient of `model` by its mean over all ranks (one all-reduce per dtype).

        A parameter that has no gradient on some ranks counts as zero there; one that has none on any rank
        keeps none (a flag per parameter rides along in the same buffer, so this costs no extra collective).
        Parameters without data yet are skipped (they must be lazy on every rank alike).
        """
        if self.size == 1:
            return
        params = [p for _, p in named_params(model, "allreduce_grad") if p.data is not None]
        if not params:
            return
        for indices in _grouped(p.data for p in params).values():
            group = [params[i] for i in indices]
            set_mean_grads(group, self._packed_mean(grads_with_flags(group)))

    def allreduce_persistent(self, model: Any) -> None:
        """Replace the running statistics of every BatchNorm in `model` (`avg_mean`, `avg_var`) by their mean over
        all ranks, in one all-reduce per dtype (ChainerMN's name). Each rank's statistics saw only its shard:
        call this before evaluating or saving the model on one rank. Statistics not created yet are skipped."""
        if self.size == 1:
            return
        stats = [p for p in _running_statistics(model) if p.data is not None]
        for indices in _grouped(p.data for p in stats).values():
            group = [stats[i] for i in indices]
            for p, view in zip(group, self._packed_mean([p.data for p in group])):
                p.data = view

    def _packed_mean(self, arrays: list) -> list:
        """The mean over all ranks of `arrays` (one library, dtype and device), as views of one reduced buffer.
        The 1/size rides along with the packing copy: one pass, then a plain sum over ranks."""
        flat = pack(arrays, scale=1 / self.size)
        out = self._from_buffer(self._allreduce_buffer(self._to_buffer(flat), "sum"), flat)
        return unpack(out, [tuple(a.shape) for a in arrays])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


def named_params(model: Any, where: str) -> list[tuple[str, Parameter]]:
    """`model.named_params()` as a list; a TypeError naming `where` for anything that is not a Layer."""
    if callable(getattr(model, "named_params", None)):
        return list(model.named_params())
    if callable(getattr(model, "params", None)):
        return [(str(i), p) for i, p in enumerate(model.params())]
    raise TypeError(f"{where}: expected a Layer or Model (anything with params()), got {type(model).__name__}")


def _running_statistics(model: Any) -> list[Parameter]:
    """The running statistics of the BatchNorm layers in `model` (a Layer), in a fixed order."""
    if not isinstance(model, Layer):
        raise TypeError(f"allreduce_persistent: expected a Layer or Model, got {type(model).__name__}")
    return [p for layer in model.sublayers() if isinstance(layer, BatchNorm) for p in (layer.avg_mean, layer.avg_var)]


def _grouped(arrays: Iterable[Any]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(group_key(a), []).append(i)
    return groups


def grads_with_flags(params: Sequence[Parameter]) -> list[Any]:
    """The gradients of `params` (one library, dtype and device; zeros where a parameter has none), then one
    has-gradient flag per parameter: what an all-reduce of gradients sends, the flags counting the ranks."""
    first = params[0].data
    xp = array_namespace(first)
    arrays = [xp.zeros_like(p.data) if p.grad is None else checked_grad(p) for p in params]
    has_grad = [0.0 if p.grad is None else 1.0 for p in params]
    return [*arrays, xp.asarray(has_grad, dtype=first.dtype, device=device_of(first))]


def set_mean_grads(params: Sequence[Parameter], views: Sequence[Any]) -> None:
    """Give each parameter its reduced gradient from `views` (those of `grads_with_flags`, reduced), or None where
    no rank had one."""
    for p, view, count in zip(params, views, to_numpy(views[-1])):
        p.grad = Variable(view, requires_grad=False) if count > 0 else None


def checked_grad(p: Parameter) -> Any:
    """`p`'s gradient array; TypeError when it is not of p's kind (library, dtype, shape)."""
    g = p.grad.data
    if type(g) is not type(p.data) or g.dtype != p.data.dtype or tuple(g.shape) != tuple(p.data.shape):
        raise TypeError(
            f"allreduce_grad: parameter {p.name or ''} holds {p.data.dtype} {tuple(p.data.shape)} "
            f"but its gradient is {g.dtype} {tuple(g.shape)} of another kind; gradients must match their parameters"
        )
    return g


def _scalar(v: Any, where: str) -> float:
    if isinstance(v, Variable):
        v = v.data
    try:
        return float(to_numpy(v)) if is_array(v) else float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: expected a number or a 0-d array, got {type(v).__name__}") from None
