"""Capture: a training step recorded once and replayed without rebuilding the graph (`xdezero.capture`).

- `step.py`: the user-facing wrapper: a call's signature, and which tape records, confirms or replays it;
- `record.py`: the recorder the engine reports to through its one seam (`xdezero._config.recorder_slot`);
- `replay.py`: a recording as a flat program, and the comparison of two recordings;
- `values.py`: how values compare across calls and recordings (host copies, fingerprints, settings);
- `graphs.py`: a replay as one CUDA graph (CuPy, torch on CUDA);
- `compile.py`: a replay as one compiled function (JAX's `jax.jit`).
"""

from xdezero.tapes.record import CaptureError
from xdezero.tapes.step import CapturedStep, capture

__all__ = ["capture", "CaptureError", "CapturedStep"]
