"""`create_multi_node_evaluator`: metrics computed on each rank's shard, averaged over all ranks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from xdezero.distributed.communicator import Communicator

__all__ = ["create_multi_node_evaluator"]


def create_multi_node_evaluator(evaluate: Callable[..., Any], communicator: Communicator) -> Callable[..., Any]:
    """`evaluate` with its result averaged over all ranks (one collective), returned on every rank.

    `evaluate(*args, **kwargs)` computes metrics on this rank's data: a number, a 0-d array or Variable, or a
    mapping of names to such values; floats come back (a dict of them for a mapping). The plain mean over ranks is the
    mean over all examples when every shard has the same size (what `scatter_dataset` gives; with
    `remainder="pad"` the few repeated examples count twice).
    """

    @functools.wraps(evaluate)
    def multi_node_evaluate(*args: Any, **kwargs: Any) -> Any:
        result = evaluate(*args, **kwargs)
        if isinstance(result, Mapping):
            return communicator.allreduce(result, "mean")
        return communicator.allreduce({"value": result}, "mean")["value"]

    return multi_node_evaluate
